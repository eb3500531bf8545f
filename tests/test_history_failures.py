"""A history that cannot be written never stops a run: locked by another process, or a file
that can be read but not written. In the CLI (a real child process) and in the window."""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_history import cli, history_file, record

from dolly_desktop.generation.params import GenerationParams
from dolly_desktop.history import store as history_mod
from dolly_desktop.history.runs import run_and_record
from dolly_desktop.history.store import History

ARGS = ["--greedy", "--max-new-tokens", "8", "Who is Dolly?"]


def seeded(home: Path) -> Path:
    """A history file with one entry, as an earlier session left it."""
    path = history_file(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    with History(path) as h:
        record(h, "An old question", "An old answer.")
    return path


@contextlib.contextmanager
def write_locked(path: Path) -> Iterator[None]:
    """Another process's open write transaction (a second window, a backup tool)."""
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        locker.execute("ROLLBACK")
        locker.close()


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """A file that can be read but not written, in a writable folder. As root, file modes do
    not stop writes: the immutable attribute does."""
    if os.geteuid() != 0:
        path.chmod(0o444)
    elif subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("this file system cannot make a file read-only for root (chattr +i)")
    try:
        yield
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        else:
            path.chmod(0o644)


def test_cli_answers_while_another_process_holds_the_history_lock(tiny_models, tmp_path):
    home = tmp_path / "home"
    path = seeded(home)
    with write_locked(path):  # for longer than the 10 s busy timeout
        p = cli(home, "generate", "--model", str(tiny_models["FP16"]), *ARGS)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip(), "no answer"
    notices = [ln for ln in p.stderr.splitlines() if "History is not being saved" in ln]
    assert len(notices) == 1 and "locked" in notices[0], p.stderr
    assert [e.instruction for e in History(path).list()] == ["An old question"]


def test_cli_answers_and_lists_a_read_only_history(tiny_models, tmp_path):
    home = tmp_path / "home"
    path = seeded(home)
    before = path.read_bytes()
    with read_only(path):
        p = cli(home, "generate", "--model", str(tiny_models["FP16"]), *ARGS)
        ls = cli(home, "history", "list")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() and "History is not being saved" in p.stderr, p.stderr
    assert ls.returncode == 0 and "An old question" in ls.stdout, (ls.stdout, ls.stderr)
    assert path.read_bytes() == before


@pytest.fixture
def window(monkeypatch, own_home, request):
    monkeypatch.setattr(history_mod, "BUSY_TIMEOUT_S", 0.3)  # not the 10 s a person waits
    seeded(own_home)
    return request.getfixturevalue("tiny_window")  # opened after the history was seeded


def test_window_answers_and_recovers_when_history_cannot_be_written(qtbot, window):
    window.instruction.setPlainText("Who is Dolly?")
    window.greedy.setChecked(True)
    with write_locked(window.history.path):
        with qtbot.waitSignal(window.response_done, timeout=60_000):
            window.submit()
        assert window.last_result is not None and window.last_result.text
        assert not window.generating and window.submit_button.isEnabled()
        # The save was queued and retried in the background; given up, it is said.
        qtbot.waitUntil(lambda: "History is not being saved" in window.error_text(), timeout=5000)
        # The same failure again is not shown again, and the next answer still comes.
        window._hide_banner()
        with qtbot.waitSignal(window.response_done, timeout=60_000):
            window.submit()
        assert window.history.flush(5)
        qtbot.wait(100)
        assert window.error_text() == "" and window.last_result.text
    assert [e.instruction for e in window.history.list()] == ["An old question"]


# ---- a lock held while a run streams: nothing waits for it ------------------------------

STORY = "Write a long story about Dolly the sheep."


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[sqlite3.Connection]:
    """Another process's connection, ready to take the lock with BEGIN EXCLUSIVE (from any
    thread) and to give it back when the block ends."""
    locker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        yield locker
    finally:
        if locker.in_transaction:
            locker.execute("ROLLBACK")
        locker.close()


# A stall: a gap between pieces this long. A save or read that waited on the lock would wait
# the retry time (BUSY_TIMEOUT_S, set well above this in each test), while a loaded 2-core
# machine was seen to leave 1.3 s between two pieces of an unblocked run.
STALL_S = 2.5


def generate_locked_from_first_token(engine, h: History, locker: sqlite3.Connection):
    """A real generation recorded in `h`, the lock taken when the first piece is shown; the
    caller's thread reads the history meanwhile, as the History tab does. Returns the result,
    the pieces' arrival times, the reads' durations and the notices."""
    arrivals: list[float] = []
    notices: list[str] = []
    out: list = []

    def on_text(piece: str) -> None:
        if not arrivals:
            locker.execute("BEGIN EXCLUSIVE")
        elif time.monotonic() - arrivals[-1] > STALL_S:
            engine.cancel()  # stalled: no need to sit through every other stall to see it
        arrivals.append(time.monotonic())

    def generate() -> None:
        params = GenerationParams(max_new_tokens=200, seed=11)
        out.append(run_and_record(engine, h, STORY, params, on_text, notices.append))

    worker = threading.Thread(target=generate)
    worker.start()
    reads = []
    while worker.is_alive():
        t0 = time.monotonic()
        h.list()
        reads.append(time.monotonic() - t0)
        time.sleep(0.02)
    worker.join()
    (result,) = out
    return result, arrivals, reads, notices


def test_a_locked_history_never_stalls_the_run_or_a_read_and_is_saved_later(
    engine, tmp_path, monkeypatch
):
    monkeypatch.setattr(history_mod, "BUSY_TIMEOUT_S", 30.0)  # retried longer than the run
    path = tmp_path / "history.sqlite3"
    h = History(path)
    with exclusive(path) as locker:
        result, arrivals, reads, notices = generate_locked_from_first_token(engine, h, locker)
        assert locker.in_transaction, "the lock was never taken"
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        assert len(arrivals) > 50 and max(gaps) < STALL_S, f"a {max(gaps):.1f} s stall"
        assert arrivals[-1] - arrivals[0] < 25, "too slow a machine to tell"
        assert max(reads) < STALL_S, f"a read waited {max(reads):.1f} s"
        assert h.saving and notices == []  # queued, not given up yet
    # The lock is given back within the retry time: the whole run is saved after all.
    assert h.flush(10)
    (entry,) = h.list()
    assert entry.response == result.text and entry.stop_reason == result.stop_reason.value
    assert entry.generated_tokens == result.generated_tokens
    assert h.take_notices() == [] and notices == []


def test_a_save_locked_for_longer_than_its_retries_is_given_up_with_one_notice(
    engine, tmp_path, monkeypatch
):
    monkeypatch.setattr(history_mod, "BUSY_TIMEOUT_S", 2 * STALL_S)
    path = tmp_path / "history.sqlite3"
    h = History(path)
    with exclusive(path) as locker:
        result, arrivals, reads, notices = generate_locked_from_first_token(engine, h, locker)
        ended = time.monotonic()
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        assert max(gaps) < STALL_S and max(reads) < STALL_S, (max(gaps), max(reads))
        assert h.flush(20), "still retrying after the retry time"
        assert time.monotonic() - ended < 2 * STALL_S + STALL_S
        assert notices == ["History is not being saved: database is locked."]
    (entry,) = h.list()  # the row from before the lock, without the text
    assert entry.response == "" and entry.stop_reason == "interrupted"
    assert result.text


@pytest.fixture
def seeded_window(own_home, request):
    """The window, on a history with one old entry; saves retried the full BUSY_TIMEOUT_S."""
    seeded(own_home)
    return request.getfixturevalue("tiny_window")


def test_history_tab_refreshes_at_once_while_a_run_streams_into_a_locked_history(
    qtbot, seeded_window
):
    from PySide6.QtCore import Qt

    window = seeded_window
    window.instruction.setPlainText(STORY)
    window.spins["max_new_tokens"].setValue(200)  # shorter than the retries, on this machine
    with exclusive(window.history.path) as locker:
        last = [time.monotonic()]

        def lock_at_first_piece(_piece: str) -> None:
            if not locker.in_transaction:
                locker.execute("BEGIN EXCLUSIVE")
            elif time.monotonic() - last[0] > STALL_S:
                window.worker.cancel()  # stalled: seen once is enough
            last[0] = time.monotonic()

        window.worker.piece.connect(lock_at_first_piece, Qt.ConnectionType.DirectConnection)
        refreshes = []
        started = time.monotonic()
        window.submit()
        while window.generating and time.monotonic() - started < 120:
            t0 = time.monotonic()
            window.history_panel.refresh()
            refreshes.append(time.monotonic() - t0)
            qtbot.wait(50)
        window.worker.piece.disconnect(lock_at_first_piece)
        assert locker.in_transaction and not window.generating
        assert refreshes and max(refreshes) < STALL_S, f"the window froze {max(refreshes):.1f} s"
        text = window.last_result.text
    assert window.history.flush(10)
    window.history_panel.refresh()
    assert window.history_panel.list.count() == 2
    newest = window.history.list()[0]
    assert newest.instruction == STORY and newest.response == text


def test_deleting_while_another_program_holds_the_lock_says_so_at_once(
    qtbot, tmp_path, monkeypatch
):
    from dolly_desktop.ui.history_panel import HistoryPanel

    monkeypatch.setattr(history_mod, "BUSY_TIMEOUT_S", 2 * STALL_S)
    path = tmp_path / "history.sqlite3"
    with History(path) as h:
        record(h, "An old question", "An old answer.")
    panel = HistoryPanel(History(path))
    qtbot.addWidget(panel)
    panel.show()
    panel.list.setCurrentRow(0)
    with write_locked(path):
        t0 = time.monotonic()
        panel.delete_current(confirm=False)
        assert time.monotonic() - t0 < STALL_S
        assert panel.busy_label.isVisible() and "locked" in panel.busy_label.text()
        assert panel.list.count() == 1
    panel.delete_current(confirm=False)
    assert panel.list.count() == 0 and not panel.busy_label.isVisible()
    assert History(path).list() == []


# ---- a full disk: the log fails quietly ----------------------------------------------------

LOGS_A_LOT = """
import logging, sys
from dolly_desktop.logs import setup_logging
setup_logging(console=True)
for i in range(30):
    logging.getLogger("dolly_desktop.test").info("line %d of the story", i)
logging.getLogger("dolly_desktop.test").warning("a warning the person must see")
print("done", flush=True)
"""


def log_on_a_full_disk(home: Path) -> Path:
    """The log file on a disk with no room left: /dev/full takes the open, fails each write."""
    log = home / "data" / "logs" / "dolly-desktop.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.symlink_to("/dev/full")
    return log


def test_a_log_file_that_cannot_be_written_costs_one_line(tmp_path):
    home = tmp_path / "home"
    log_on_a_full_disk(home)
    p = subprocess.run(
        [sys.executable, "-c", LOGS_A_LOT], capture_output=True, text=True, timeout=60,
        env={**os.environ, "DOLLY_DESKTOP_HOME": str(home)},
    )  # fmt: skip
    assert p.returncode == 0 and p.stdout == "done\n", p.stderr
    lines = p.stderr.splitlines()
    assert "Logging error" not in p.stderr and "Traceback" not in p.stderr, p.stderr[:2000]
    assert lines[-1] == "dolly-desktop: a warning the person must see", lines
    (note,) = lines[:-1]
    assert "log file" in note and "No space left on device" in note, note


def test_generate_with_its_log_on_a_full_disk_prints_no_traceback(tiny_models, tmp_path):
    home = tmp_path / "home"
    log_on_a_full_disk(home)
    p = cli(home, "generate", "--model", str(tiny_models["FP16"]), *ARGS)
    assert p.returncode == 0 and p.stdout.strip(), p.stderr
    assert "Logging error" not in p.stderr and "Traceback" not in p.stderr, p.stderr[:2000]
    note, metrics = p.stderr.splitlines()
    assert "log file" in note and "tokens" in metrics, p.stderr
    assert [e.instruction for e in History(history_file(home)).list()] == ["Who is Dolly?"]
