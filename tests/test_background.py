"""ui/background.Job under stress: started and cancelled at every point of its life, many times;
each delivers exactly one outcome then `ended`, on the GUI thread, and nothing to a destroyed
owner (issue 22: cancels whose end never came, a token count landing on a closed window)."""

from __future__ import annotations

import random
import threading
import time

import shiboken6
from PySide6.QtCore import QThread
from PySide6.QtWidgets import QLabel, QWidget

from dolly_desktop.models.cancel import Cancelled
from dolly_desktop.ui.background import Job

MS = 60_000
MOMENTS = ("before start", "right after start", "while working", "after it returned", "never")


def _work(steps: int, fails: bool, ran: list[bool]):
    def work(progress, cancel: threading.Event) -> int:
        ran.append(True)
        for i in range(steps):
            progress("step", i / steps)
            if cancel.wait(0.0005):
                raise Cancelled()
        if fails:
            raise ValueError("on purpose")
        return steps

    return work


def test_every_job_ends_exactly_once_whenever_it_is_cancelled(qtbot):
    rng = random.Random(22)
    gui = QThread.currentThread()
    records: list[tuple[str, list[str], list[bool]]] = []  # no Job kept: none is needed
    for _ in range(400):
        moment = rng.choice(MOMENTS)
        ran: list[bool] = []
        job = Job("stress", _work(rng.randint(0, 6), rng.random() < 0.2, ran))
        heard: list[str] = []

        def note(what: str, heard: list[str] = heard) -> None:
            assert QThread.currentThread() is gui, f"{what} delivered off the GUI thread"
            heard.append(what)

        job.done.connect(lambda _r, note=note: note("done"))
        job.failed.connect(lambda _m, note=note: note("failed"))
        job.cancelled.connect(lambda note=note: note("cancelled"))
        job.ended.connect(lambda note=note: note("ended"))
        if moment == "before start":
            job.cancel()
        job.start()
        if moment == "right after start":
            job.cancel()
        elif moment == "while working":
            time.sleep(rng.random() * 0.002)
            job.cancel()
        elif moment == "after it returned":
            assert job.wait(MS)
            job.cancel()
        records.append((moment, heard, ran))
    del job  # the jobs must reach their end with no reference kept by the caller
    qtbot.waitUntil(lambda: all(len(h) >= 2 for _, h, _ in records), timeout=MS)
    qtbot.wait(50)  # nothing more may come
    for moment, heard, ran in records:
        assert len(heard) == 2 and heard[1] == "ended", (moment, heard)
        assert heard[0] in ("done", "failed", "cancelled"), (moment, heard)
        if moment == "before start":
            assert heard[0] == "cancelled" and not ran, "cancelled before start, yet it ran"


def test_a_listener_that_comes_late_still_hears_the_end(qtbot):
    job = Job("late", _work(0, False, []))
    job.cancel()
    job.start()
    assert job.wait(MS)
    qtbot.waitUntil(lambda: job.over, timeout=MS)
    heard: list[str] = []
    job.when_over(lambda: heard.append("over"))  # after the end: called at once
    assert heard == ["over"]


def test_a_delivered_job_is_no_longer_connected_to_its_listeners(qtbot):
    """A listener destroyed after the end never calls back into the job (docs/segfault.md)."""
    from PySide6.QtCore import SIGNAL

    owner = QWidget()
    job = Job("count", lambda _p, _c: 7, owner=owner)
    heard: list[object] = []
    job.done.connect(heard.append)
    job.ended.connect(owner.close)
    job.progress.connect(lambda *_: None)
    job.start()
    qtbot.waitUntil(lambda: job.over, timeout=MS)
    assert heard == [7]
    for signature in ("done(PyObject)", "ended()", "progress(QString,double)"):
        assert job.receivers(SIGNAL(signature)) == 0, signature
    shiboken6.delete(owner)


def test_nothing_reaches_an_owner_destroyed_while_the_work_ran(qtbot):
    """A count that finishes after its window closed: before, a call into a deleted QLabel."""
    for _ in range(50):
        owner = QWidget()
        label = QLabel(owner)
        release = threading.Event()

        def work(progress, _cancel, release=release) -> int:
            release.wait(MS / 1000)
            progress("late", 1.0)
            return 7

        job = Job("count", work, owner=owner)
        job.progress.connect(lambda _s, _f, label=label: label.setText("progress"))
        job.done.connect(lambda n, label=label: label.setText(str(n)))
        job.ended.connect(lambda label=label: label.setText("ended"))
        job.start()
        shiboken6.delete(owner)  # the window closed (its label with it)
        release.set()
        qtbot.waitUntil(lambda job=job: job.over, timeout=MS)
        assert not shiboken6.isValid(label)
