"""`dolly-desktop serve`: an OpenAI-compatible HTTP API over one Engine (Starlette + uvicorn).

Choices a client should know (also in docs/remote.md):
- Dolly is an instruction model. `/v1/completions` takes `prompt` as the instruction and wraps
  it in Dolly's template, unless it already is a whole Dolly prompt (it starts with the intro
  and ends with `### Response:`), as RemoteEngine and other Dolly-aware clients send: then it
  is used as is. `/v1/chat/completions` takes the last user message as the instruction; system
  messages and earlier turns are ignored, because Dolly was tuned on single
  instruction/response pairs and has no template for a conversation.
- `temperature: 0` means greedy decoding; `top_k: -1` means no top-k (vLLM/OVMS usage).
  `top_k` and `repetition_penalty` are accepted as extensions. Other OpenAI fields that do not
  change the answer (user, logprobs: null, ...) are ignored; `n` other than 1 is refused.
- Without `max_tokens` a response is at most GenerationParams' default (256 tokens).
- `stop` strings apply to the response text: it is cut before the first one found.

The engine runs one generation at a time, so requests take turns: one runs, up to `queue`
wait, and any more are refused at once with 429. A client that goes away (a closed stream, or
a dropped connection while it waits) cancels its generation, which frees the engine.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pydantic_core
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from dolly_desktop.errors import DollyError
from dolly_desktop.generation.engine import EngineBase, GenerationResult, StopReason
from dolly_desktop.generation.params import GenerationParams
from dolly_desktop.generation.prompt import (
    INTRO_BLURB,
    MAX_INSTRUCTION_CHARS,
    PROMPT_FORMAT,
    RESPONSE_KEY,
    build_prompt,
)
from dolly_desktop.generation.text import StreamText
from dolly_desktop.server.errors import ApiError, internal_error
from dolly_desktop.server.guard import Guard, protocol_with_header_deadline

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 1 << 20  # a 20 000-character instruction is ~80 kB even as JSON escapes
BODY_TIMEOUT_S = 30.0  # the whole body must arrive within this once the headers are in
MAX_STOP_CHARS = 200  # each stop string; they are searched for as every piece arrives
KEEPALIVE_S = 5.0  # an SSE comment this often while a request waits, so clients do not time out
# API field -> GenerationParams field: their checks (type, range) are GenerationParams' own.
_SAMPLING_FIELDS = {
    "max_tokens": "max_new_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "repetition_penalty": "repetition_penalty",
    "seed": "seed",
}


class _Gate:
    """One generation at a time (the engine allows no more), `capacity` admitted in all."""

    def __init__(self, queue: int) -> None:
        self.lock = asyncio.Lock()
        self.capacity = queue + 1
        self.admitted = 0
        self.running: _Job | None = None
        self.closing = False  # the server is stopping: answer nobody new


def _shutting_down() -> ApiError:
    return ApiError(503, "The server is shutting down.", kind="server_error")


class _Job:
    """One request's generation: waits for its turn, runs in a worker thread, and hands text
    and the outcome to the event loop as events ("text", str), ("done", result), ("error", e).
    """

    def __init__(
        self,
        rid: str,
        engine: EngineBase,
        prompt: str,
        params: GenerationParams,
        stops: list[str],
        gate: _Gate,
    ) -> None:
        self.rid = rid
        self.engine = engine
        self.prompt = prompt
        self.params = params
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
        async with gate.lock:
            if self.abandoned.is_set():
                return ("gone", None)
            event = ("error", _shutting_down()) if gate.closing else await self._in_thread()
        if event[0] == "done":
            result: GenerationResult = event[1]
            reason = "cancelled" if self.abandoned.is_set() else self.finish_reason(result)
            log.info("%s: %s (%s)", self.rid, result.metrics_line(), reason)
            if (
                gate.closing
                and result.stop_reason is StopReason.CANCELLED
                and not self.text.stopped
            ):
                event = ("error", _shutting_down())  # cut short: say so, not "length"
        self.events.put_nowait(event)
        return event

    async def _in_thread(self) -> tuple[str, Any]:
        """Generate on a worker thread; the caller holds the lock."""
        self.running = True
        self._gate.running = self
        work = self._loop.run_in_executor(None, self._generate)
        try:
            return ("done", await asyncio.shield(work))
        except asyncio.CancelledError:
            # The event loop is being torn down: keep the lock until the engine has stopped.
            self.engine.cancel()
            await asyncio.wait([work])
            raise
        except Exception as e:
            return ("error", e)
        finally:
            self.running = False
            self._gate.running = None

    def _generate(self) -> GenerationResult:
        return self.engine.generate_from_prompt(self.prompt, self.params, self._on_text)

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
        """The client is gone: leave the queue, or stop the engine if it is ours."""
        if self.task.done():
            return
        self.abandoned.set()
        if self.running:
            self.engine.cancel()
        else:
            self.task.cancel()  # still waiting: leave the queue now

    def finish_reason(self, result: GenerationResult) -> str:
        return "stop" if self.text.stopped or result.stop_reason is StopReason.END else "length"


@dataclass
class _Request:
    """A validated generation request."""

    prompt: str
    params: GenerationParams
    stops: list[str]
    stream: bool
    include_usage: bool


class OpenAIServer:
    """The routes, over one engine. `app` is the Starlette application."""

    def __init__(
        self,
        engine: EngineBase,
        model_id: str,
        api_key: str | None,
        queue: int,
        host_names: tuple[str, ...] = (),
        origins: tuple[str, ...] = (),
        body_timeout_s: float = BODY_TIMEOUT_S,
    ) -> None:
        if queue < 0:
            raise DollyError("The queue length must be 0 or more.")
        self.engine = engine
        self.model_id = model_id
        self.api_key = api_key or None
        self.queue = queue
        self.created = int(time.time())
        self.body_timeout_s = body_timeout_s
        self._gate: _Gate | None = None  # made on the server's event loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self.routes = Starlette(
            routes=[
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/v1/models/{model_id:path}", self.model, methods=["GET"]),
                Route("/v1/completions", self.completions, methods=["POST"]),
                Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            ],
            exception_handlers={
                ApiError: _api_error,
                HTTPException: _http_error,
            },
            lifespan=self._lifespan,
        )
        # Host, Origin and Content-Type checks before any route; errors no route answered.
        self.app = Guard(self.routes, host_names, origins)

    def uvicorn_config(self, read_timeout_s: float) -> uvicorn.Config:
        """How uvicorn runs this app: headers within `read_timeout_s` of a connection opening
        or of the last answer, idle connections closed after 5 s, headers at most 16 KiB."""
        return uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            http=protocol_with_header_deadline(read_timeout_s),
            h11_max_incomplete_event_size=MAX_HEADER_BYTES,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=30,  # a long prompt's prefill cannot be interrupted
        )

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self._gate = _Gate(self.queue)
        self._loop = asyncio.get_running_loop()
        yield
        self.engine.cancel()  # in case anything still runs

    def close_soon(self) -> None:
        """Stop answering: the running generation is cancelled, waiting and new requests get
        503, so open streams end at once. Safe from a signal handler or any thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._close)

    def _close(self) -> None:
        gate = self._gate
        if gate is not None:
            gate.closing = True
            if gate.running is not None:
                self.engine.cancel()

    # --- routes

    async def models(self, request: Request) -> Response:
        self._authorize(request)
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model(self, request: Request) -> Response:
        self._authorize(request)
        if request.path_params["model_id"] != self.model_id:
            raise ApiError(
                404,
                f"There is no model {request.path_params['model_id']!r}; "
                f"this server has {self.model_id!r}.",
                "model",
                code="model_not_found",
            )
        return JSONResponse(self._model_card())

    async def completions(self, request: Request) -> Response:
        self._authorize(request)
        body = await self._read_json(request)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]  # one prompt in a list, as some clients send it
        if not isinstance(prompt, str):
            raise ApiError(400, "prompt must be one string: the instruction.", "prompt")
        req = await self._parse(body, _as_prompt(prompt, "prompt"), "prompt", "max_tokens")
        return await self._answer(request, req, chat=False)

    async def chat_completions(self, request: Request) -> Response:
        self._authorize(request)
        body = await self._read_json(request)
        instruction = _last_user_message(body.get("messages"))
        limit = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        req = await self._parse(body, _as_prompt(instruction, "messages"), "messages", limit)
        return await self._answer(request, req, chat=True)

    # --- request handling

    async def _read_json(self, request: Request) -> dict[str, Any]:
        """The body as a JSON object: at most MAX_BODY_BYTES, within body_timeout_s."""
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            raise _too_large()

        async def read() -> bytes:
            raw = bytearray()
            async for part in request.stream():
                raw += part
                if len(raw) > MAX_BODY_BYTES:
                    raise _too_large()
            return bytes(raw)

        try:
            raw = await asyncio.wait_for(read(), self.body_timeout_s)
        except TimeoutError as e:
            raise ApiError(
                408, f"The request body did not arrive within {self.body_timeout_s:g} s."
            ) from e
        except ClientDisconnect as e:
            log.info("%s %s: the client left before sending its body", request.method,
                     request.url.path)  # fmt: skip
            raise ApiError(400, "The request body ended early.") from e
        try:
            body = pydantic_core.from_json(raw)
        except ValueError as e:
            raise ApiError(400, f"The request body is not valid JSON: {e}.") from e
        if not isinstance(body, dict):
            raise ApiError(400, "The request body must be a JSON object.")
        return body

    def _authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # The scheme is case-insensitive (RFC 9110); the key is compared in constant time.
        right = secrets.compare_digest(given.strip().encode(), self.api_key.encode())
        if not (right and scheme.lower() == "bearer"):
            raise ApiError(
                401,
                "Missing or wrong API key: send the header 'Authorization: Bearer <key>'.",
                kind="authentication_error",
                code="invalid_api_key",
            )

    async def _parse(
        self, body: dict[str, Any], prompt: str, prompt_field: str, limit_field: str
    ) -> _Request:
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise ApiError(400, "model must be a string.", "model")
        n = body.get("n", 1)
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n != 1):
            raise ApiError(400, "Only one choice per request (n = 1) is supported.", "n")
        logprobs = body.get("logprobs")
        if (logprobs is not None and logprobs is not False) or body.get("top_logprobs") is not None:
            raise ApiError(400, "Log probabilities are not supported.", "logprobs")
        stream = body.get("stream")
        if stream is not None and not isinstance(stream, bool):
            raise ApiError(400, "stream must be true or false.", "stream")
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
            raise ApiError(400, "stream_options must be an object.", "stream_options")
        req = _Request(
            prompt=prompt,
            params=_params(body, limit_field),
            stops=_stops(body.get("stop")),
            stream=bool(stream),
            include_usage=options.get("include_usage") is True,
        )
        # Refused here rather than by the engine after the request waited for its turn.
        n = await asyncio.to_thread(self.engine.count_tokens, prompt)
        if n >= self.engine.context_length:
            raise ApiError(
                400,
                f"The prompt is {n} tokens; this model reads at most "
                f"{self.engine.context_length - 1}. Shorten the instruction.",
                prompt_field,
                code="context_length_exceeded",
            )
        return req

    def _admit(self, rid: str, req: _Request) -> _Job:
        gate = self._gate
        assert gate is not None, "the app runs without its lifespan"
        if gate.closing:
            raise _shutting_down()
        if gate.admitted >= gate.capacity:
            raise ApiError(
                429,
                f"The server is busy: one request is being answered and {self.queue} are "
                "waiting. Try again shortly.",
                kind="rate_limit_error",
                code="queue_full",
            )
        return _Job(rid, self.engine, req.prompt, req.params, req.stops, gate)

    async def _answer(self, request: Request, req: _Request, chat: bool) -> Response:
        reply = _Reply(self.model_id, chat)
        job = self._admit(reply.id, req)
        if req.stream:
            return StreamingResponse(
                self._stream(job, reply, req.include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            kind, value = await _wait_unless_gone(request, job)
        finally:
            job.abandon()  # a no-op once finished; otherwise the client has gone (or errored)
        if kind == "error":
            raise _engine_error(value)
        if kind != "done":
            return Response(status_code=499)  # nobody is listening
        result: GenerationResult = value
        text = job.text.text
        return JSONResponse(reply.whole(text, job.finish_reason(result), _usage(result)))

    async def _stream(self, job: _Job, reply: _Reply, include_usage: bool) -> AsyncIterator[str]:
        # Starlette cancels this generator when the client disconnects; `finally` then
        # cancels the generation (or takes the request out of the queue).
        try:
            if reply.chat:
                yield reply.chunk({"role": "assistant", "content": ""})
            while True:
                try:
                    kind, value = await asyncio.wait_for(job.events.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield ": waiting\n\n"  # an SSE comment: clients skip it
                    continue
                if kind == "text":
                    yield reply.chunk(value)
                    continue
                if kind == "error":
                    yield _sse(_engine_error(value).body())
                else:
                    tail = job.text.finish()
                    if tail:
                        yield reply.chunk(tail)
                    yield reply.chunk(None, job.finish_reason(value))
                    if include_usage:
                        yield _sse(reply.usage_chunk(_usage(value)))
                break
            yield "data: [DONE]\n\n"
        finally:
            job.abandon()

    def _model_card(self) -> dict[str, Any]:
        return {
            "id": self.model_id,
            "object": "model",
            "created": self.created,
            "owned_by": "dolly-desktop",
            "max_model_len": self.engine.context_length,  # vLLM's name for the context
        }


class _Reply:
    """Response bodies in OpenAI's shapes for one request."""

    def __init__(self, model_id: str, chat: bool) -> None:
        self.chat = chat
        self.model_id = model_id
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def _head(self, suffix: str = "") -> dict[str, Any]:
        kind = "chat.completion" if self.chat else "text_completion"
        return {"id": self.id, "object": kind + suffix, "created": self.created}

    def whole(self, text: str, finish: str, usage: dict[str, int]) -> dict[str, Any]:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}}
        else:
            choice = {"index": 0, "text": text, "logprobs": None}
        choice["finish_reason"] = finish
        return {**self._head(), "model": self.model_id, "choices": [choice], "usage": usage}

    def chunk(self, delta: str | dict[str, str] | None, finish: str | None = None) -> str:
        if self.chat:
            content = (
                delta if isinstance(delta, dict) else {} if delta is None else {"content": delta}
            )
            choice: dict[str, Any] = {"index": 0, "delta": content}
        else:
            choice = {"index": 0, "text": delta or "", "logprobs": None}
        choice["finish_reason"] = finish
        suffix = ".chunk" if self.chat else ""
        return _sse({**self._head(suffix), "model": self.model_id, "choices": [choice]})

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]:
        suffix = ".chunk" if self.chat else ""
        return {**self._head(suffix), "model": self.model_id, "choices": [], "usage": usage}


# --- helpers


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _too_large() -> ApiError:
    return ApiError(413, f"The request body is over {MAX_BODY_BYTES >> 20} MiB.")


_TEMPLATE_CHARS = len(PROMPT_FORMAT.format(instruction=""))


def _as_prompt(text: str, field: str) -> str:
    """The model's prompt for an instruction, or a whole Dolly prompt as is."""
    if text.startswith(INTRO_BLURB) and text.endswith(f"{RESPONSE_KEY}\n"):
        if len(text) > MAX_INSTRUCTION_CHARS + _TEMPLATE_CHARS:  # before it is tokenized
            raise ApiError(
                400,
                f"The prompt is {len(text)} characters long; the limit is "
                f"{MAX_INSTRUCTION_CHARS + _TEMPLATE_CHARS}.",
                field,
            )
        return text
    try:
        return build_prompt(text)
    except DollyError as e:
        raise ApiError(400, str(e), field) from e


def _last_user_message(messages: Any) -> str:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list of messages.", "messages")
    for m in reversed(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(400, "Each message must be an object with a role.", "messages")
        if m["role"] != "user":
            continue
        content = m.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list) and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            for p in content
        ):
            return "\n".join(p["text"] for p in content)
        raise ApiError(400, "A user message's content must be text.", "messages")
    raise ApiError(400, "messages has no user message: it holds the instruction.", "messages")


def _params(body: dict[str, Any], limit_field: str) -> GenerationParams:
    values: dict[str, Any] = {}
    for api, name in _SAMPLING_FIELDS.items():
        field = limit_field if api == "max_tokens" else api
        value = body.get(field)
        if value is None:
            continue
        if api == "temperature" and _is_number(value) and value == 0:
            values["greedy"] = True
            continue
        if api == "top_k" and _is_number(value) and value == -1:
            value = 0  # "all tokens" in vLLM and OVMS; 0 is the same here
        try:
            GenerationParams(**{name: value})  # the one place ranges and types are checked
        except DollyError as e:
            raise ApiError(400, str(e), field) from e
        values[name] = value
    return GenerationParams(**values)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _stops(stop: Any) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise ApiError(400, "stop must be a string or a list of strings.", "stop")
    if len(stops) > 4:
        raise ApiError(400, "stop holds at most 4 strings.", "stop")
    if any(len(s) > MAX_STOP_CHARS for s in stops):
        raise ApiError(400, f"Each stop string is at most {MAX_STOP_CHARS} characters.", "stop")
    return stops


async def _wait_unless_gone(request: Request, job: _Job) -> tuple[str, Any]:
    """The job's outcome; ("gone", None) as soon as the client has disconnected."""
    while True:
        done, _ = await asyncio.wait([job.task], timeout=0.25)  # a cheap check
        if done:
            return job.task.result() if not job.task.cancelled() else ("gone", None)
        if await request.is_disconnected():
            return ("gone", None)


def _usage(result: GenerationResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.input_tokens,
        "completion_tokens": result.generated_tokens,
        "total_tokens": result.input_tokens + result.generated_tokens,
    }


def _engine_error(e: BaseException) -> ApiError:
    if isinstance(e, ApiError):
        return e
    # A DollyError raised from a runtime error is the engine failing, not the request.
    if isinstance(e, DollyError) and e.__cause__ is None:
        return ApiError(400, str(e))
    log.error("generation failed", exc_info=e)
    return internal_error()


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = f"{request.method} {request.url.path}: {exc.detail}."
    return ApiError(exc.status_code, message).response()
