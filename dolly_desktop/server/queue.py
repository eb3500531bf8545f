"""Who generates now and who waits: `slots` requests run at once (1 for the one-stream engine,
the batch size with continuous batching), up to `queue` more wait their turn in order, and any
more are refused at once (429). A client that goes away leaves the queue, or cancels its own
generation.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dolly_desktop.generation.engine import EngineBase, GenerationResult, StopReason
from dolly_desktop.generation.params import GenerationParams
from dolly_desktop.generation.text import StreamText
from dolly_desktop.server.errors import ApiError

log = logging.getLogger(__name__)


def shutting_down() -> ApiError:
    return ApiError(503, "The server is shutting down.", kind="server_error")


class Gate:
    """`slots` generations at a time, `slots + queue` admitted in all; made on the event loop.

    `session()` gives the engine for one request: with one slot, the engine itself; with
    several, an engine whose cancel() stops only that request.
    """

    def __init__(self, slots: int, queue: int, session: Callable[[], EngineBase]) -> None:
        self.slots = slots
        self.queue = queue
        self.turns = asyncio.Semaphore(slots)  # FIFO: waiters are woken in order
        self.capacity = slots + queue
        self.admitted = 0
        self.running: set[Job] = set()
        self.closing = False  # the server is stopping: answer nobody new
        self.session = session
        # One thread per slot: the default executor may have fewer threads than the batch.
        self.threads = ThreadPoolExecutor(slots, thread_name_prefix="generate")

    def busy(self) -> ApiError:
        return ApiError(
            429,
            f"The server is busy: {self.slots} request(s) are being answered and "
            f"{self.queue} are waiting. Try again shortly.",
            kind="rate_limit_error",
            code="queue_full",
        )

    def admit(
        self,
        rid: str,
        prompt: str,
        params: GenerationParams,
        stops: list[str],
        grammar: str | None = None,
    ) -> Job:
        if self.closing:
            raise shutting_down()
        if self.admitted >= self.capacity:
            raise self.busy()
        return Job(rid, self, prompt, params, stops, grammar)

    def close(self) -> None:
        """Stop answering: running generations are cancelled, waiting ones get 503."""
        self.closing = True
        for job in list(self.running):
            job.engine.cancel()


class Job:
    """One request's generation: waits for its turn, runs in a worker thread, and hands text
    and the outcome to the event loop as events ("text", str), ("done", result), ("error", e).
    """

    def __init__(
        self,
        rid: str,
        gate: Gate,
        prompt: str,
        params: GenerationParams,
        stops: list[str],
        grammar: str | None = None,
    ) -> None:
        self.rid = rid
        self.engine = gate.session()
        self.prompt = prompt
        self.params = params
        self.grammar = grammar
        self.text = StreamText(stops)
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.running = False
        self.abandoned = threading.Event()  # read by the engine's thread
        self._loop = asyncio.get_running_loop()
        self._gate = gate
        gate.admitted += 1
        self.task = asyncio.create_task(self._run())
        self.task.add_done_callback(self._leave)

    def _leave(self, _: asyncio.Task) -> None:
        self._gate.admitted -= 1

    async def _run(self) -> tuple[str, Any]:
        gate = self._gate
        event: tuple[str, Any]
        async with gate.turns:
            if self.abandoned.is_set():
                return ("gone", None)
            event = ("error", shutting_down()) if gate.closing else await self._in_thread()
        if event[0] == "done":
            result: GenerationResult = event[1]
            reason = "cancelled" if self.abandoned.is_set() else self.finish_reason(result)
            log.info("%s: %s (%s)", self.rid, result.metrics_line(), reason)
            if (
                gate.closing
                and result.stop_reason is StopReason.CANCELLED
                and not self.text.stopped
            ):
                event = ("error", shutting_down())  # cut short: say so, not "length"
        self.events.put_nowait(event)
        return event

    async def _in_thread(self) -> tuple[str, Any]:
        """Generate on a worker thread; the caller holds a turn."""
        self.running = True
        self._gate.running.add(self)
        work = self._loop.run_in_executor(self._gate.threads, self._generate)
        try:
            return ("done", await asyncio.shield(work))
        except asyncio.CancelledError:
            # The event loop is being torn down: keep the turn until the engine has stopped.
            self.engine.cancel()
            await asyncio.wait([work])
            raise
        except Exception as e:
            return ("error", e)
        finally:
            self.running = False
            self._gate.running.discard(self)

    def _generate(self) -> GenerationResult:
        return self.engine.generate_from_prompt(
            self.prompt, self.params, self._on_text, grammar=self.grammar
        )

    def _on_text(self, piece: str) -> None:  # on the engine's thread
        if self.abandoned.is_set() or self._gate.closing:
            # Also covers a cancel that came before generate() cleared the engine's flag.
            self.engine.cancel()
            return
        delta = self.text.feed(piece)
        if self.text.stopped:
            self.engine.cancel()  # a stop string or template key: the rest is not wanted
        if delta:
            self._loop.call_soon_threadsafe(self.events.put_nowait, ("text", delta))

    def abandon(self) -> None:
        """The client is gone: leave the queue, or stop the generation if it runs."""
        if self.task.done():
            return
        self.abandoned.set()
        if self.running:
            self.engine.cancel()
        else:
            self.task.cancel()  # still waiting: leave the queue now

    def finish_reason(self, result: GenerationResult) -> str:
        return "stop" if self.text.stopped or result.stop_reason is StopReason.END else "length"
