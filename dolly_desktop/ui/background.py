"""The one way the window runs long work off the GUI thread: downloads, imports, a server test,
and child jobs (export, compress).

A `Job` runs `fn(progress, cancel)` on Qt's thread pool. Its signals belong to the Job, which
lives on the GUI thread, so Qt queues every emit from the worker to the GUI thread: no relay
object. Exactly one of done / failed / cancelled comes, then `ended`. `cancel()` is safe at any
time, also before the work has started: the work then never runs. Work that cannot look at the
event (a child process) passes an `on_cancel` that stops it from outside; a ChildJob made on
the GUI thread before `start()` refuses to start once cancelled.

superqt's `create_worker` was the model; it has no cancel for a plain function, and a child
job's progress arrives through a callback, not a generator, so this is a little of our own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

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

    def __init__(self, title: str, fn: JobFn, on_cancel: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.title = title
        self.running = False
        self._fn = fn
        self._on_cancel = on_cancel
        self._cancel = threading.Event()
        self._finished = threading.Event()

    def start(self) -> None:
        self.running = True
        QThreadPool.globalInstance().start(QRunnable.create(self._run))

    def cancel(self) -> None:
        self._cancel.set()
        if self._on_cancel is not None:
            self._on_cancel()

    def wait(self, ms: int = 30_000) -> bool:
        return self._finished.wait(ms / 1000)

    def _run(self) -> None:  # on a pool thread
        try:
            if self._cancel.is_set():
                raise Cancelled()
            result = self._fn(self.progress.emit, self._cancel)
        except Cancelled:
            self._end(self.cancelled)
        except Exception as e:
            if self._cancel.is_set():  # a cancelled download may fail on its closed socket
                self._end(self.cancelled)
            else:
                self._end(self.failed, describe(e))
        else:
            if self._cancel.is_set():
                self._end(self.cancelled)
            else:
                self._end(self.done, result)

    def _end(self, signal: Any, *args: Any) -> None:
        self.running = False
        self._finished.set()
        signal.emit(*args)
        self.ended.emit()
