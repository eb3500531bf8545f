"""The engine's thread. The GUI thread never waits on the engine: it sends requests through
queued signals and hears back through signals; cancel is a direct, thread-safe call."""

from __future__ import annotations

import logging

from PySide6.QtCore import QObject, QThread, Signal, Slot

from dolly_desktop.errors import DollyError
from dolly_desktop.generation.engine import EngineBase, GenerationResult
from dolly_desktop.generation.local import Engine
from dolly_desktop.generation.params import GenerationParams
from dolly_desktop.history.store import History

log = logging.getLogger(__name__)


def describe(e: BaseException) -> str:
    """One sentence for the window; the trace goes to the log."""
    if isinstance(e, DollyError):
        return str(e)
    log.error("unexpected error", exc_info=e)
    return f"Something went wrong: {e}. Details are in the log file."


class EngineWorker(QObject):
    """Owns the Engine; lives on its own QThread, so loading and generating never block the
    window. Requests run one at a time in the order they were sent."""

    loading = Signal(str, str)  # folder, device
    loaded = Signal(str, str, float)  # folder, device, seconds
    load_failed = Signal(str)
    piece = Signal(str)  # one per streamed piece of text
    finished = Signal(object)  # GenerationResult
    failed = Signal(str)

    def __init__(self) -> None:
        super().__init__()
        self.engine: EngineBase | None = None
        self.history = History(enabled=False)  # the window sets the real one
        self.options: dict = {}  # Engine keyword arguments (cache_dir, properties)
        self._closing = False

    @Slot(str, str)
    def load(self, folder: str, device: str) -> None:
        if self._closing:
            return
        self.loading.emit(folder, device)
        self.engine = None  # free the old model before the new one is read
        try:
            # Warms up behind the indicator; a person reads between answers, which is when the
            # engine prefills Dolly's template head for the next one.
            engine = Engine(folder, device, reuse_template=True, **self.options)
        except Exception as e:
            self.load_failed.emit(describe(e))
            return
        self.engine = engine
        self.loaded.emit(folder, device, engine.load_s + engine.warmup_s)

    @Slot(str, str)
    def load_remote(self, url: str, api_key: str) -> None:
        """Use an OpenAI-compatible server (dolly-desktop serve, OpenVINO Model Server)."""
        from dolly_desktop.generation.remote import RemoteEngine

        if self._closing:
            return
        self.loading.emit(url, "remote")
        self.engine = None
        try:
            engine = RemoteEngine(url, api_key or None)
        except Exception as e:
            self.load_failed.emit(describe(e))
            return
        self.engine = engine
        self.loaded.emit(url, engine.device, engine.load_s)

    @Slot(str, object)
    def generate(self, instruction: str, params: GenerationParams) -> None:
        if self._closing:
            return
        if self.engine is None:
            self.failed.emit("No model is loaded: open a model folder first.")
            return
        engine = self.engine
        run = self.history.start_run(instruction, params, engine.model, engine.device)

        def on_text(piece: str) -> None:
            # May run on an openvino-genai thread: Qt queues the signal to the window.
            self.piece.emit(piece)
            run.append(piece)

        try:
            with run:  # a run left without finish() is recorded as cancelled or failed
                result: GenerationResult = engine.generate(instruction, params, on_text)
                run.finish(result)
        except Exception as e:
            self.failed.emit(describe(e))
            return
        self.finished.emit(result)

    def cancel(self) -> None:
        """Called from the GUI thread while generate() runs here."""
        if self.engine is not None:
            self.engine.cancel()

    def progress(self) -> tuple[int, float]:
        return self.engine.progress() if self.engine is not None else (0, 0.0)

    def shut_down(self) -> None:
        """Refuse queued work and stop what runs; the thread then ends at once."""
        self._closing = True
        self.cancel()


class EngineThread:
    """The worker and its thread, started together and stopped cleanly together."""

    def __init__(self) -> None:
        self.thread = QThread()
        self.thread.setObjectName("engine")
        self.worker = EngineWorker()
        self.worker.moveToThread(self.thread)
        self.thread.start()

    def stop(self, timeout_ms: int = 60_000) -> bool:
        self.worker.shut_down()
        self.thread.quit()
        return self.thread.wait(timeout_ms)
