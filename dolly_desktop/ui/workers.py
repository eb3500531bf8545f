"""The engine's thread. The GUI thread never waits on the engine: it sends requests through
queued signals and hears back through signals; cancel is a direct, thread-safe call."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from PySide6.QtCore import QObject, QThread, Signal, Slot

from dolly_desktop.errors import DollyError
from dolly_desktop.generation.engine import REMOTE, EngineBase
from dolly_desktop.generation.engines.local import Engine
from dolly_desktop.generation.params import GenerationParams
from dolly_desktop.history.runs import run_and_record
from dolly_desktop.history.store import History

log = logging.getLogger(__name__)


def describe(e: BaseException) -> str:
    """One sentence for the window; the trace goes to the log."""
    if isinstance(e, DollyError):
        return str(e)
    log.error("unexpected error", exc_info=e)
    return f"Something went wrong: {e}. Details are in the log file."


@dataclass(frozen=True)
class LoadRequest:
    """A model to load: a local folder on a device with Engine options, or a remote server."""

    folder: str  # a model folder, or the server's URL when `remote`
    device: str = "CPU"
    options: dict[str, Any] = field(default_factory=dict)  # Engine keyword arguments
    remote: bool = False
    api_key: str = ""


@dataclass(frozen=True)
class GenerateRequest:
    """One answer: everything the worker needs comes with it, nothing is set from outside."""

    instruction: str
    params: GenerationParams
    history: History
    context: str = ""  # a passage to work from, in Dolly's Input: format
    sources: tuple[dict[str, Any], ...] = ()  # the document chunks the passage is made of


class EngineWorker(QObject):
    """Owns the engine; lives on its own QThread, so loading and generating never block the
    window. Requests run one at a time in the order they were sent."""

    loading = Signal(str, str)  # folder or URL, device
    loaded = Signal(str, str, float)  # folder or URL, device, seconds
    load_failed = Signal(str)
    piece = Signal(str)  # one per streamed piece of text (for listeners; the window reads
    # the text through stream_ready / take_text, at most once a frame)
    stream_ready = Signal()  # text waits in take_text(); sent once until it is taken
    finished = Signal(object)  # GenerationResult
    failed = Signal(str)
    notice = Signal(str)  # a history problem, once per sentence: the answer still comes

    def __init__(self) -> None:
        super().__init__()
        self.engine: EngineBase | None = None
        self._closing = False
        self._lock = threading.Lock()
        self._stream: list[str] = []  # pieces not yet taken by the window
        self._told = False  # stream_ready sent and the text not taken since

    def _on_text(self, piece: str) -> None:
        """Any thread (genai's own, maybe): keep the piece, tell the window once."""
        with self._lock:
            self._stream.append(piece)
            tell, self._told = not self._told, True
        if tell:
            self.stream_ready.emit()
        self.piece.emit(piece)

    def take_text(self) -> str:
        """The text streamed since the last call (GUI thread)."""
        with self._lock:
            text = "".join(self._stream)
            self._stream.clear()
            self._told = False
        return text

    @Slot(object)
    def load(self, req: LoadRequest) -> None:
        if self._closing:
            return
        self.loading.emit(req.folder, REMOTE if req.remote else req.device)
        self._drop_engine()  # free the old model before the new one is read
        try:
            engine: EngineBase
            if req.remote:
                from dolly_desktop.generation.engines.remote import RemoteEngine

                engine = RemoteEngine(req.folder, req.api_key or None, notify=self.notice.emit)
            else:
                # Warms up behind the indicator; a person reads between answers, which is when
                # the engine prefills Dolly's template head for the next one.
                engine = Engine(req.folder, req.device, reuse_template=True, **req.options)
        except Exception as e:
            self.load_failed.emit(describe(e))
            return
        engine.notify = self.notice.emit  # e.g. a remote server replaced by the next one
        self.engine = engine
        self.loaded.emit(req.folder, engine.device, engine.load_s)

    @Slot(object)
    def generate(self, req: GenerateRequest) -> None:
        if self._closing:
            return
        if self.engine is None:
            self.failed.emit("No model is loaded: open a model folder first.")
            return
        try:
            # on_text may run on an openvino-genai thread: Qt queues the signal to the window.
            result = run_and_record(
                self.engine, req.history, req.instruction, req.params,
                self._on_text, self.notice.emit, req.context, req.sources,
            )  # fmt: skip
        except Exception as e:  # every request ends in finished or failed, whatever happened
            self.failed.emit(describe(e))
            return
        self.finished.emit(result)

    def _drop_engine(self) -> None:
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.close()

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
