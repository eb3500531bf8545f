"""The one way the window runs long work off the GUI thread: downloads, imports, a server test,
token counts, and child jobs (export, compress).

A `Job` runs `fn(progress, cancel)` on Qt's thread pool. Exactly one of done / failed /
cancelled comes, then `ended`, always on the GUI thread. `cancel()` is safe at any time, also
before the work has started: the work then never runs. Work that cannot look at the event (a
child process) passes an `on_cancel` that stops it from outside; a ChildJob made on the GUI
thread before `start()` refuses to start once cancelled.

Two things a plain emit from the pool thread got wrong (issue 22, tests/test_background.py):
- a queued emit reaches only the slots connected when it is emitted, and a Python object that
  nobody holds any more is deleted with its queued events: a job cancelled before it started
  could end before anyone listened, or never be heard of. So the pool thread hands its outcome
  to the Job over one internal queued signal, the Job is kept alive until it has delivered it,
  and `over` (or `when_over`) tells whoever comes late;
- an `owner` widget destroyed while the work ran (a closed window) got a call into a deleted
  C++ object. The outcome is delivered only while the owner is alive.

superqt's `create_worker` was the model; it has no cancel for a plain function, no owner, and
a child job's progress arrives through a callback, not a generator: so this is our own.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import shiboken6
from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal, Slot

from dolly_desktop.models.cancel import Cancelled
from dolly_desktop.ui.workers import describe

ProgressFn = Callable[[str, float], None]  # stage text, fraction 0..1
JobFn = Callable[[ProgressFn, threading.Event], Any]


class Job(QObject):
    """One piece of background work with progress, cancel and errors as signals."""

    progress = Signal(str, float)
    done = Signal(object)
    failed = Signal(str)
    cancelled = Signal()
    ended = Signal()  # after any of done/failed/cancelled

    # From the pool thread to the Job (which lives on the GUI thread): queued.
    _outcome = Signal(str, object)
    _step = Signal(str, float)

    _alive: ClassVar[set[Job]] = set()  # started and not yet delivered: not collected

    def __init__(
        self,
        title: str,
        fn: JobFn,
        on_cancel: Callable[[], None] | None = None,
        owner: QObject | None = None,
    ) -> None:
        super().__init__()
        self.title = title
        self.running = False
        self.over = False  # the outcome was delivered (or dropped with its owner)
        self._fn = fn
        self._on_cancel = on_cancel
        self._owner = owner
        self._cancel = threading.Event()
        self._finished = threading.Event()
        self._late: list[Callable[[], None]] = []
        self._outcome.connect(self._deliver)
        self._step.connect(self._deliver_step)

    def start(self) -> None:
        self.running = True
        Job._alive.add(self)
        QThreadPool.globalInstance().start(QRunnable.create(self._run))

    def cancel(self) -> None:
        self._cancel.set()
        if self._on_cancel is not None:
            self._on_cancel()

    def wait(self, ms: int = 30_000) -> bool:
        """Block until the work has returned (not until the outcome is delivered)."""
        return self._finished.wait(ms / 1000)

    def when_over(self, fn: Callable[[], None]) -> None:
        """Call `fn` on the GUI thread once the outcome is delivered: now, if it already was."""
        if self.over:
            fn()
        else:
            self._late.append(fn)

    def _run(self) -> None:  # on a pool thread
        try:
            if self._cancel.is_set():
                raise Cancelled()
            result = self._fn(self._step.emit, self._cancel)
        except Cancelled:
            outcome, payload = "cancelled", None
        except Exception as e:
            # A cancelled download may fail on its closed socket: that is still a cancel.
            cancelled = self._cancel.is_set()
            outcome, payload = ("cancelled", None) if cancelled else ("failed", describe(e))
        else:
            cancelled = self._cancel.is_set()
            outcome, payload = ("cancelled", None) if cancelled else ("done", result)
        self._finished.set()
        self._outcome.emit(outcome, payload)

    def _owner_alive(self) -> bool:
        return self._owner is None or shiboken6.isValid(self._owner)

    @Slot(str, float)
    def _deliver_step(self, stage: str, fraction: float) -> None:  # GUI thread
        if self.running and self._owner_alive():
            self.progress.emit(stage, fraction)

    @Slot(str, object)
    def _deliver(self, outcome: str, payload: Any) -> None:  # GUI thread
        self.running = False
        try:
            if self._owner_alive():
                if outcome == "done":
                    self.done.emit(payload)
                elif outcome == "failed":
                    self.failed.emit(payload)
                else:
                    self.cancelled.emit()
                self.ended.emit()
        finally:
            self.over = True
            Job._alive.discard(self)
            late, self._late = self._late, []
            for fn in late:
                fn()
            self._disconnect_all()

    def _disconnect_all(self) -> None:
        """A delivered job emits nothing more: it stops being a sender to its listeners, so a
        listener destroyed later (a window's deleteLater) never calls back into this job,
        whose Python object may be gone by then (docs/segfault.md, the second crash)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a signal nobody listened to
            for sig in (self.progress, self.done, self.failed, self.cancelled, self.ended):
                with contextlib.suppress(RuntimeError, TypeError):
                    sig.disconnect()
