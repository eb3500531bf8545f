"""Long model jobs (download, export, compress, import) on a thread of their own."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QThread, Signal, Slot

from dolly_desktop.models.cancel import Cancelled
from dolly_desktop.ui.workers import describe

# A job gets a progress callback (stage text, fraction 0..1) and a cancel event.
JobFn = Callable[[Callable[[str, float], None], threading.Event], Any]


class _JobWorker(QObject):
    progress = Signal(str, float)
    done = Signal(object)
    failed = Signal(str)
    cancelled = Signal()

    def __init__(self, fn: JobFn, cancel: threading.Event) -> None:
        super().__init__()
        self.fn = fn
        self.cancel = cancel

    @Slot()
    def run(self) -> None:
        try:
            result = self.fn(self.progress.emit, self.cancel)
        except Cancelled:
            self.cancelled.emit()
            return
        except Exception as e:
            if self.cancel.is_set():
                self.cancelled.emit()
            else:
                self.failed.emit(describe(e))
            return
        if self.cancel.is_set():
            self.cancelled.emit()
        else:
            self.done.emit(result)


class Job(QObject):
    """One running job. Signals arrive on the GUI thread; cancel() is safe to call any time."""

    progress = Signal(str, float)
    done = Signal(object)
    failed = Signal(str)
    cancelled = Signal()
    ended = Signal()  # after any of done/failed/cancelled

    def __init__(self, title: str, fn: JobFn, on_cancel: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.title = title
        self._cancel = threading.Event()
        self._on_cancel = on_cancel
        self._thread = QThread()
        self._worker = _JobWorker(fn, self._cancel)
        self._worker.moveToThread(self._thread)
        self._thread.started.connect(self._worker.run)
        self._worker.progress.connect(self._relay_progress)
        self._worker.done.connect(self._relay_done)
        self._worker.failed.connect(self._relay_failed)
        self._worker.cancelled.connect(self._relay_cancelled)
        self.running = False

    def start(self) -> None:
        self.running = True
        self._thread.start()

    def cancel(self) -> None:
        self._cancel.set()
        if self._on_cancel is not None:
            self._on_cancel()

    def wait(self, ms: int = 30_000) -> bool:
        return self._thread.wait(ms)

    @Slot(str, float)
    def _relay_progress(self, stage: str, frac: float) -> None:
        self.progress.emit(stage, frac)

    @Slot(object)
    def _relay_done(self, result: object) -> None:
        self._finish()
        self.done.emit(result)
        self.ended.emit()

    @Slot(str)
    def _relay_failed(self, message: str) -> None:
        self._finish()
        self.failed.emit(message)
        self.ended.emit()

    @Slot()
    def _relay_cancelled(self) -> None:
        self._finish()
        self.cancelled.emit()
        self.ended.emit()

    def _finish(self) -> None:
        self.running = False
        self._thread.quit()
        self._thread.wait()
