"""A history that cannot be written never stops a run: locked by another process, or a file
that can be read but not written. In the CLI (a real child process) and in the window."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_history import cli, history_file, record

from dolly_desktop.history import store as history_mod
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
        assert "History is not being saved" in window.error_text()
        # The same failure again is not shown again, and the next answer still comes.
        window._hide_banner()
        with qtbot.waitSignal(window.response_done, timeout=60_000):
            window.submit()
        assert window.error_text() == "" and window.last_result.text
    assert [e.instruction for e in window.history.list()] == ["An old question"]
