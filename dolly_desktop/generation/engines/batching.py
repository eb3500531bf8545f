"""Continuous batching: many requests decoded together, for `serve`.

openvino-genai's ContinuousBatchingPipeline keeps the KV cache in blocks (paged attention) and
decodes every running request in one step: each step reads the weights once for all of them,
so on a CPU, where decoding is bound by memory bandwidth, four streams cost little more than
one. One scheduler thread drives the pipeline: it adds new requests between steps, steps, and
passes each request's new token ids to the thread that asked, which turns them into text
(detokenizing, the text callback) while the next step runs.

The pipeline itself lives in a child process (`_Stepper`), because genai's Python binding of
`step()` holds the GIL for the whole step, the grammar compile of a structured-output request
included: in-process, a server's event loop stalled for as long (0.1-0.4 s on the tiny model,
one step's time on every step of a large one). Here the scheduler thread waits on a pipe with
the GIL free. A child that dies (a native crash) fails the requests it held, and the next
request starts a new one.

`BatchingEngine` follows the engine contract for one request per call, but calls may overlap
(each its own sampling parameters and seed). `cancel()` stops every running request; a
`session()` is an engine of its own for one request at a time whose `cancel()` drops only its
request. Dolly's stop at `### End`, the token accounting and the sampling settings are the
one-stream engine's own (generation/engines/local.py), so both engines answer alike: greedy answers
are the same token for token (on exact f32 precision, tests/test_serve_batching.py).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import openvino_genai as ov_genai

from dolly_desktop import paths
from dolly_desktop.children import self_command
from dolly_desktop.errors import DollyError
from dolly_desktop.generation.devices import check_device
from dolly_desktop.generation.engine import (
    EngineBase,
    GenerationResult,
    ModelRef,
    TextCallback,
)
from dolly_desktop.generation.engines.local import cpu_defaults
from dolly_desktop.generation.engines.streaming import TokenStreamer, first_line, generation_config
from dolly_desktop.generation.memory import bound_onednn_cache
from dolly_desktop.generation.params import GenerationParams
from dolly_desktop.generation.prompt import find_end_token_id, room_after
from dolly_desktop.generation.tuning.rule import KERNEL_CACHE, runtime_option
from dolly_desktop.models.capacity import available_memory_bytes, format_bytes
from dolly_desktop.models.convert.tokenizer import convert_tokenizer_files
from dolly_desktop.models.folder import ModelDir, inspect_model_dir, read_config

log = logging.getLogger(__name__)

# local.py does this at import too; said here as well, since a server sees every prompt length.
bound_onednn_cache(KERNEL_CACHE)

GIB = 1 << 30
DEFAULT_MAX_BATCH = 4
MAX_BATCHED_TOKENS = 256  # prompt tokens per step: a long prefill is split, streams go on
KV_SHARE_OF_FREE_RAM = 0.25  # the default KV cache takes at most this much of free memory
# Tokens in a KV block: genai's CPU cache uses blocks of 32, its GPU cache 16 (or more).
KV_BLOCK_TOKENS = {"CPU": 32}
KV_BLOCK_TOKENS_OTHER = 16


@dataclass(frozen=True)
class KvPlan:
    """The KV cache: how many blocks (genai's num_kv_blocks) or GB (cache_size, as asked), and
    what it holds.

    The whole cache ends up resident: genai hands its free blocks out first in, first out, so
    each new request writes blocks that no request has touched for longest, and over enough
    requests every page of the cache is touched. A cache larger than the batch can use is
    memory the server takes for nothing (docs/benchmarks.md, "Serve memory: the KV cache")."""

    blocks: int  # 0 when cache_gb decides
    cache_gb: int  # 0 unless asked for
    bytes_per_token: int
    tokens: int  # how many tokens of context fit, across all running requests
    reason: str

    @property
    def bytes(self) -> int:
        return self.tokens * self.bytes_per_token

    def line(self) -> str:
        size = f"{self.cache_gb} GB" if self.cache_gb else format_bytes(self.bytes)
        return (
            f"KV cache {size}: {self.tokens} tokens of context in all "
            f"({format_bytes(self.bytes_per_token)} a token; {self.reason})"
        )

    def apply(self, scheduler: ov_genai.SchedulerConfig) -> None:
        if self.blocks:
            scheduler.num_kv_blocks = self.blocks  # genai: this wins over cache_size
        else:
            scheduler.cache_size = self.cache_gb


def kv_bytes_per_token(info: ModelDir, properties: dict[str, Any]) -> int:
    """K and V for every layer, in the cache's precision: as asked, else as the export left it
    in the IR (f16 from optimum-intel), else OpenVINO's u8 (which keeps a scale and a zero
    point per head as well, counted here as a quarter more)."""
    cfg = read_config(info.path)
    layers = int(cfg.get("num_hidden_layers", 32))
    hidden = int(cfg.get("hidden_size", 2560))
    default = runtime_option(info.path, "KV_CACHE_PRECISION") or "u8"
    precision = str(properties.get("KV_CACHE_PRECISION", default)).lower()
    size = {"f32": 4, "f16": 2, "bf16": 2}.get(precision, 1.25)
    return math.ceil(2 * layers * hidden * size)


def plan_kv_cache(
    info: ModelDir,
    max_batch: int,
    properties: dict[str, Any],
    cache_gb: int | None = None,
    free_bytes: int | None = None,
    device: str = "CPU",
) -> KvPlan:
    """Blocks for `max_batch` full contexts and no more, within a quarter of free memory but
    never less than one full context; or `cache_gb` as given."""
    per_token = kv_bytes_per_token(info, properties)
    if cache_gb is not None:
        if cache_gb < 1:
            raise DollyError(f"The KV cache must be at least 1 GB; got {cache_gb}.")
        return KvPlan(0, cache_gb, per_token, cache_gb * GIB // per_token, "as asked")
    block = KV_BLOCK_TOKENS.get(device.split(".")[0].upper(), KV_BLOCK_TOKENS_OTHER)
    per_context = math.ceil(info.context_length / block)
    blocks = max_batch * per_context
    reason = f"{max_batch} full contexts of {info.context_length} tokens"
    free = available_memory_bytes() if free_bytes is None else free_bytes
    if free is not None and blocks * block * per_token > free * KV_SHARE_OF_FREE_RAM:
        fit = int(free * KV_SHARE_OF_FREE_RAM) // (block * per_token)
        blocks = max(per_context, fit)
        reason = f"a quarter of the {format_bytes(free)} of free memory"
        if fit < per_context:
            reason = f"one full context: a quarter of the {format_bytes(free)} free holds less"
    return KvPlan(blocks, 0, per_token, blocks * block, reason)


@dataclass
class _Request:
    """One generation in the batch, from submit to its result."""

    rid: int
    ids: list[int]
    params: GenerationParams
    max_new: int
    grammar: str | None
    streamer: TokenStreamer
    cancel: threading.Event
    submitted: float
    added: bool = False  # in the pipeline
    error: BaseException | None = None
    # Token ids from the scheduler thread, then None once the request has left the batch.
    inbox: queue.SimpleQueue[list[int] | None] = field(default_factory=queue.SimpleQueue)
    ended: threading.Event = field(default_factory=threading.Event)  # the streamer said stop


class BatchingEngine(EngineBase):
    """One model on one device, many requests at once (openvino-genai continuous batching)."""

    def __init__(
        self,
        model_dir: Path | str,
        device: str = "CPU",
        max_batch: int = DEFAULT_MAX_BATCH,
        cache_gb: int | None = None,
        properties: dict[str, Any] | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        super().__init__()
        if max_batch < 1:
            raise DollyError(f"The batch must hold at least 1 request; got {max_batch}.")
        self.device = check_device(device)
        self.info = inspect_model_dir(Path(model_dir))
        self.model_dir = self.info.path
        self.model = ModelRef.from_folder(self.model_dir)
        self.max_batch = max_batch
        if not self.info.has_ov_tokenizer:
            convert_tokenizer_files(self.model_dir)
        # The one-stream engine's CPU settings but its attention backend (this pipeline is
        # the paged one): the bounded kernel caches matter most to a server, which sees every
        # prompt length its clients send (docs/benchmarks.md, "Memory across prompt lengths").
        cpu = {k: v for k, v in cpu_defaults(self.model_dir).items() if k != "ATTENTION_BACKEND"}
        props = {**(cpu if self.device == "CPU" else {}), **(properties or {})}
        cache = Path(cache_dir) if cache_dir else paths.compiled_cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        props["CACHE_DIR"] = str(cache)
        self.kv = plan_kv_cache(self.info, max_batch, props, cache_gb, device=self.device)
        t0 = time.perf_counter()
        self._stepper_args = (str(self.model_dir), self.device, props, self.kv, max_batch)
        self.stepper = _Stepper(*self._stepper_args)
        self.tokenizer = ov_genai.Tokenizer(str(self.model_dir))
        self.eos_id = int(self.tokenizer.get_eos_token_id())
        self.end_id = find_end_token_id(self.encode, self.eos_id)
        self._ids = itertools.count()
        self._cond = threading.Condition()
        self._incoming: list[_Request] = []
        self._running: list[_Request] = []  # the scheduler thread's own
        self._sessions: set[_Session] = set()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="batching-scheduler", daemon=True)
        self._thread.start()
        self.load_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        # The CPU plugin repacks weights on the first inference: now, not in the first answer.
        self.session().generate("Hi", GenerationParams(greedy=True, max_new_tokens=1))
        self.warmup_s = time.perf_counter() - t1
        log.info(
            "loaded %s on %s for batches of %d in %.2f s, warmed up in %.2f s; %s",
            self.model_dir, self.device, max_batch, self.load_s, self.warmup_s, self.kv.line(),
        )  # fmt: skip

    # --- the engine contract

    @property
    def context_length(self) -> int:
        return self.info.context_length

    def encode(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text).input_ids.data
        return [int(i) for i in ids[0]]

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def session(self) -> EngineBase:
        """An engine for one request at a time on this batch: its cancel() drops only that
        request."""
        return _Session(self)

    def generate_from_prompt(
        self,
        prompt: str,
        params: GenerationParams | None = None,
        on_text: TextCallback | None = None,
        stop_token_ids: set[int] | None = None,
        grammar: str | None = None,
    ) -> GenerationResult:
        """As the contract says, but calls may overlap: each is its own request."""
        return self.session().generate_from_prompt(prompt, params, on_text, stop_token_ids, grammar)

    def cancel(self) -> None:
        """Stop every running request."""
        with self._cond:
            sessions = list(self._sessions)
        for s in sessions:
            s.cancel()

    def progress(self) -> tuple[int, float]:
        """Tokens generated so far and the decode rate, summed over the running requests."""
        with self._cond:
            streamers = [r.streamer for r in (*self._running, *self._incoming)]
        return sum(len(s.tokens) for s in streamers), sum(s.rate() for s in streamers)

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        self.stepper.close()

    # --- requests

    def _submit(
        self,
        prompt: str,
        params: GenerationParams,
        on_text: TextCallback | None,
        extra_stops: set[int] | None,
        grammar: str | None,
        cancel: threading.Event,
        session: _Session,
    ) -> GenerationResult:
        t0 = time.perf_counter()
        ids = self.encode(prompt)
        room = room_after(len(ids), self.context_length)
        stops = {self.eos_id} | ({self.end_id} if self.end_id is not None else set())
        stops |= extra_stops or set()
        max_new = min(params.max_new_tokens, room)
        streamer = TokenStreamer(self.tokenizer, on_text, cancel, stops, max_new)
        req = _Request(next(self._ids), ids, params, max_new, grammar, streamer, cancel, t0)
        with self._cond:
            if self._closing:
                raise DollyError("The engine is closed.")
            self._sessions.add(session)
            self._incoming.append(req)
            self._cond.notify_all()
        try:
            self._stream(req)
        finally:
            with self._cond:
                self._sessions.discard(session)
        if req.error is not None:
            raise req.error
        return self._result(req)

    def _stream(self, req: _Request) -> None:
        """On the caller's thread: turn the request's tokens into text (the streamer calls
        on_text) while the scheduler thread steps the batch, until the request leaves it."""
        try:
            while (ids := req.inbox.get()) is not None:
                for token in ids:
                    if req.ended.is_set():
                        break  # a stop token, cancel or the last allowed token came before
                    if req.streamer.write(token) != ov_genai.StreamingStatus.RUNNING:
                        req.ended.set()
                        with self._cond:
                            self._cond.notify_all()
        finally:
            req.ended.set()  # also when on_text raised: the batch must not go on with it
            req.streamer.end()

    def _result(self, req: _Request) -> GenerationResult:
        extra = {"prefilled_tokens": len(req.ids), "batch_rid": req.rid}
        cancelled = req.cancel.is_set()
        return req.streamer.result(self.tokenizer, cancelled, len(req.ids), req.submitted, extra)

    # --- the scheduler thread

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._incoming or self._running or self._closing):
                    self._cond.wait()
                if self._closing:
                    for req in self._incoming:
                        self._fail(req, DollyError("The engine was closed."))
                    for req in list(self._running):
                        req.cancel.set()
                        self._finish(req)
                    return
                incoming, self._incoming = self._incoming, []
            for req in incoming:
                self._start(req)
            self._drop_ended()
            if not self._running:
                continue
            try:
                news = self.stepper.step()
            except RuntimeError as e:
                error = DollyError(f"Generation failed on {self.device}: {first_line(e)}")
                error.__cause__ = e
                log.error("a batch step failed", exc_info=e)
                for req in list(self._running):  # _fail takes each out of the list
                    self._fail(req, error)
                self._clear()
                continue
            for req in list(self._running):
                self._collect(req, *news.get(req.rid, ([], "FINISHED")))

    def _clear(self) -> None:
        """After a failed step: the requests of that step are cancelled, and genai drops them
        at the next step, but only at a step that adds nothing (with a new request added,
        genai retries the failed request's work first, fails again, and from then on every
        step fails: "already in scheduling phase"). So step until they are gone before any
        new request joins."""
        if not self.stepper.alive():
            self._restart()
            return
        for _ in range(3):
            try:
                if not self.stepper.has_non_finished_requests():
                    return
                self.stepper.step()
            except RuntimeError as e:
                log.error("a batch step failed again while clearing the batch", exc_info=e)
        if not self.stepper.alive():
            self._restart()

    def _restart(self) -> None:
        """A new child for a dead one (its requests have failed already)."""
        log.error("the model process stopped (%s): starting it again", self.stepper.exit_text())
        try:
            self.stepper = _Stepper(*self._stepper_args)
        except DollyError as e:
            log.error("the model process could not start again: %s", e)

    def _start(self, req: _Request) -> None:
        if req.cancel.is_set():  # cancelled before it was added
            self._finish(req)
            return
        if not self.stepper.alive():
            self._restart()
        try:
            self.stepper.add(req.rid, req.ids, req.params, req.max_new, req.grammar)
            req.added = True
        except RuntimeError as e:
            error = DollyError(f"Generation failed on {self.device}: {first_line(e)}")
            error.__cause__ = e
            self._fail(req, error)
            return
        self._running.append(req)

    def _drop_ended(self) -> None:
        """Requests whose streamer said stop, or cancelled (maybe still in their prefill): out
        of the batch, their KV blocks freed for the others."""
        for req in list(self._running):
            if req.ended.is_set() or req.cancel.is_set():
                self._withdraw(req)
                self._finish(req)

    def _withdraw(self, req: _Request) -> None:
        if req.added:
            req.added = False
            try:
                self.stepper.cancel(req.rid)
            except RuntimeError as e:  # the child has gone: nothing left to cancel
                log.warning("could not cancel request %d: %s", req.rid, first_line(e))

    def _collect(self, req: _Request, ids: list[int], status: str) -> None:
        """Pass the request's new tokens to its caller; finish it when genai has."""
        if ids:
            req.inbox.put(ids)
        if status == "IGNORED":
            self._fail(
                req,
                DollyError(
                    "The request did not fit in the KV cache: start the server with a larger "
                    "cache or a smaller batch."
                ),
            )
        elif status != "RUNNING":
            req.added = False  # genai is done with it
            self._finish(req)

    def _finish(self, req: _Request) -> None:
        if req in self._running:
            self._running.remove(req)
        req.inbox.put(None)

    def _fail(self, req: _Request, error: BaseException) -> None:
        req.error = error
        self._withdraw(req)
        self._finish(req)


class _Session(EngineBase):
    """One request at a time on a BatchingEngine; cancel() drops only this session's request."""

    def __init__(self, batch: BatchingEngine) -> None:
        super().__init__()
        self.batch = batch
        self.model = batch.model
        self.device = batch.device
        self.load_s = batch.load_s
        self._streamer: TokenStreamer | None = None

    @property
    def context_length(self) -> int:
        return self.batch.context_length

    def count_tokens(self, text: str) -> int:
        return self.batch.count_tokens(text)

    def progress(self) -> tuple[int, float]:
        return self.batch.progress()

    def _run(
        self,
        prompt: str,
        params: GenerationParams,
        on_text: TextCallback | None,
        stop_token_ids: set[int] | None,
        grammar: str | None,
    ) -> GenerationResult:
        return self.batch._submit(
            prompt, params, on_text, stop_token_ids, grammar, self._cancel, self
        )


class StepperDied(RuntimeError):
    """The child process that holds the pipeline has gone (a native crash, or killed)."""


class _Stepper:
    """The ContinuousBatchingPipeline in a child process, driven over a pipe by one thread at a
    time (the scheduler thread). Each call waits for the child's answer with the GIL free; a
    RuntimeError in the child is raised here as a RuntimeError with its message."""

    def __init__(
        self, model_dir: str, device: str, props: dict[str, Any], kv: KvPlan, max_batch: int
    ) -> None:
        ours, theirs = socket.socketpair()
        with theirs:
            # Not multiprocessing: its spawn runs the parent's main script again in the child.
            self._proc = subprocess.Popen(
                child_command(theirs.fileno()), pass_fds=[theirs.fileno()]
            )
        self._conn = Connection(ours.detach())
        try:
            self._call("load", model_dir, device, props, kv, max_batch)
        except RuntimeError as e:
            self.close()
            raise DollyError(str(e)) from None

    def _call(self, *msg: Any) -> Any:
        try:
            self._conn.send(msg)
            kind, value = self._conn.recv()
        except (EOFError, OSError) as e:
            raise StepperDied(f"the model process stopped ({self.exit_text()})") from e
        if kind == "error":
            raise RuntimeError(value)
        return value

    def alive(self) -> bool:
        return self._proc.poll() is None

    def exit_text(self) -> str:
        try:
            code = self._proc.wait(1)
        except subprocess.TimeoutExpired:
            return "still running"
        return f"signal {-code}" if code < 0 else f"exit code {code}"

    def add(
        self, rid: int, ids: list[int], params: GenerationParams, max_new: int, grammar: str | None
    ) -> None:
        self._call("add", rid, ids, params, max_new, grammar)

    def step(self) -> dict[int, tuple[list[int], str]]:
        """One step; each request's new token ids and status (GenerationStatus's name)."""
        return self._call("step")

    def cancel(self, rid: int) -> None:
        self._call("cancel", rid)

    def has_non_finished_requests(self) -> bool:
        return self._call("busy")

    def close(self) -> None:
        if self.alive():
            with contextlib.suppress(RuntimeError):
                self._call("close")
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._conn.close()


def child_command(fd: int) -> list[str]:
    """The command that runs `child_main` on the socket `fd`."""
    return self_command("dolly_desktop.generation.engines.batching", str(fd))


def child_main(fd: int) -> None:
    """The child's entry point: the pipeline, driven over the socket `fd` until it closes."""
    # Ctrl+C at a terminal reaches the whole process group: the parent decides when this ends
    # (it closes the socket, or says close).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(fd)
    try:
        op, *args = conn.recv()
        assert op == "load", op
        _stepper_main(conn, *args)
    except (EOFError, OSError):
        return  # the parent has gone


def _stepper_main(
    conn: Connection, model_dir: str, device: str, props: dict[str, Any], kv: KvPlan,
    max_batch: int,
) -> None:  # fmt: skip
    """The child: load the pipeline, then answer the parent's calls until it closes."""
    scheduler = ov_genai.SchedulerConfig()
    scheduler.max_num_seqs = max_batch
    scheduler.max_num_batched_tokens = MAX_BATCHED_TOKENS
    kv.apply(scheduler)
    scheduler.dynamic_split_fuse = True
    # Dolly's shared template head is 21 tokens, less than one KV block: nothing to share.
    scheduler.enable_prefix_caching = False
    try:
        pipe = ov_genai.ContinuousBatchingPipeline(model_dir, scheduler, device, props)
    except RuntimeError as e:
        conn.send(("error", f"The model in {model_dir} could not be loaded on {device}: "
                            f"{first_line(e)}"))  # fmt: skip
        return
    conn.send(("ok", None))  # loaded
    handles: dict[int, ov_genai.GenerationHandle] = {}
    while True:
        op, *args = conn.recv()
        try:
            out: Any = None
            if op == "add":
                rid, ids, params, max_new, grammar = args
                # The one-stream engine's sampling settings, on this pipeline's base config.
                config = generation_config(pipe.get_config(), params, max_new, grammar)
                tensor = ov.Tensor(np.array([ids], dtype=np.int64))
                handles[rid] = pipe.add_request(rid, tensor, config)
            elif op == "step":
                pipe.step()
                out = {}
                for rid, h in list(handles.items()):
                    got = h.read() if h.can_read() else {}
                    status = h.get_status()
                    out[rid] = ([t for o in got.values() for t in o.generated_ids], status.name)
                    if status != ov_genai.GenerationStatus.RUNNING:
                        del handles[rid]
            elif op == "cancel":
                h = handles.pop(args[0], None)
                if h is not None and h.get_status() == ov_genai.GenerationStatus.RUNNING:
                    h.cancel()
            elif op == "busy":
                out = pipe.has_non_finished_requests()
            elif op == "close":
                conn.send(("ok", None))
                return
            conn.send(("ok", out))
        except RuntimeError as e:
            conn.send(("error", str(e)))


if __name__ == "__main__":
    child_main(int(sys.argv[1]))


def bundle_child_main(argv: list[str]) -> int:
    """`dolly-desktop --batching-child FD` in a frozen bundle (cli.main's CHILDREN)."""
    child_main(int(argv[0]))
    return 0
