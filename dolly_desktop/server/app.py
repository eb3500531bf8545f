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
- `response_format` `json_object` or `json_schema`: the answer is compact JSON that follows
  the schema and always closes within `max_tokens` (generation/structured.py). A schema the
  grammar cannot guarantee, one past the limits (size, depth, $ref expansion, enum length,
  grammar size, build time), or a `max_tokens` too small for the schema's shortest answers
  (`json_object` needs 3: `{}` and the end of text) is refused with 400, param
  `response_format`. The grammar is built on a worker thread, never the event loop.

`documents` (an extension): collections to find the passage in, with the chunks used returned
in `sources` (server/sources.py; the search runs on a worker thread).

`slots` requests are answered at once: 1 with the one-stream engine, the batch size with
continuous batching (generation/engines/batching.py). Up to `queue` more wait their turn, and
any more are refused at once with 429 (server/queue.py). A client that goes away (a closed
stream, or a dropped connection while it waits) cancels its own generation only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pydantic_core
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from dolly_desktop.errors import DollyError
from dolly_desktop.generation.engine import EngineBase, GenerationResult
from dolly_desktop.generation.params import GenerationParams
from dolly_desktop.generation.prompt import (
    INTRO_BLURB,
    MAX_CONTEXT_CHARS,
    MAX_INSTRUCTION_CHARS,
    PROMPT_WITH_INPUT_FORMAT,
    RESPONSE_KEY,
    build_prompt,
    room_after,
)
from dolly_desktop.generation.structured import MAX_BUILD_S
from dolly_desktop.server import api, sources
from dolly_desktop.server.errors import ApiError, internal_error
from dolly_desktop.server.guard import Guard, protocol_with_header_deadline
from dolly_desktop.server.queue import Gate, Job

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 1 << 20  # a 20 000-character instruction is ~80 kB even as JSON escapes
BODY_TIMEOUT_S = 30.0  # the whole body must arrive within this once the headers are in
KEEPALIVE_S = 5.0  # an SSE comment this often while a request waits, so clients do not time out


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
        slots: int = 1,
        session: Callable[[], EngineBase] | None = None,
    ) -> None:
        """`slots` generations at a time; with more than one, `session()` must give an engine
        for one request whose cancel() stops only that request (BatchingEngine.session)."""
        if queue < 0:
            raise DollyError("The queue length must be 0 or more.")
        if slots < 1 or (slots > 1 and session is None):
            raise DollyError("Several slots need an engine session per request.")
        self.slots = slots
        self.session = session or (lambda: engine)
        self.engine = engine
        self.model_id = model_id
        self.api_key = api_key or None
        self.queue = queue
        self.created = int(time.time())
        self.body_timeout_s = body_timeout_s
        self._gate: Gate | None = None  # made on the server's event loop
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
                # Starlette answers with this, then raises the error on: Guard logs it once.
                Exception: _unexpected_error,
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
        self._gate = Gate(self.slots, self.queue, self.session)
        self._loop = asyncio.get_running_loop()
        yield
        self._gate.close()  # in case anything still runs
        self._gate.threads.shutdown(wait=False)

    def close_soon(self) -> None:
        """Stop answering: the running generation is cancelled, waiting and new requests get
        503, so open streams end at once. Safe from a signal handler or any thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._close)

    def _close(self) -> None:
        if self._gate is not None:
            self._gate.close()

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
        req = api.parse(api.CompletionRequest, await self._read_json(request))
        return await self._answer(request, req, "prompt", chat=False)

    async def chat_completions(self, request: Request) -> Response:
        self._authorize(request)
        req = api.parse(api.ChatRequest, await self._read_json(request))
        return await self._answer(request, req, "messages", chat=True)

    # --- request handling

    async def _read_json(self, request: Request) -> Any:
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
            return pydantic_core.from_json(raw)
        except ValueError as e:
            raise ApiError(400, f"The request body is not valid JSON: {e}.") from e

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

    async def _room(self, prompt: str, field: str) -> int:
        """Tokens left for the answer; a prompt over the context is refused here rather than
        by the engine after the request waited for its turn."""
        n = await asyncio.to_thread(self.engine.count_tokens, prompt)
        try:
            return room_after(n, self.engine.context_length)
        except DollyError as e:
            raise ApiError(400, str(e), field, code="context_length_exceeded") from e

    async def _prompt(
        self, req: api.GenerationRequest, params: GenerationParams, field: str
    ) -> tuple[str, list[dict[str, Any]] | None]:
        """The model's prompt, and the document chunks in it when the request named
        collections (None when it did not)."""
        names = req.collections()
        if not names:
            return _as_prompt(req.instruction(), req.passage(), field), None
        instruction = req.instruction()
        if req.passage():
            raise ApiError(
                400,
                "Give documents or a passage (context, or two user messages in a row), not both.",
                "documents",
            )
        if _whole_prompt(instruction):
            raise ApiError(
                400, "With documents, send the instruction alone, not a whole Dolly prompt.", field
            )
        _as_prompt(instruction, "", field)  # a bad instruction is refused before any search
        found = await sources.find_passage(
            names, instruction, self.engine.count_tokens, self.engine.context_length,
            params.max_new_tokens, req.documents_fallback is True,
        )  # fmt: skip
        return _as_prompt(instruction, found.passage, field), found.sources

    async def _answer(
        self, request: Request, req: api.GenerationRequest, field: str, chat: bool
    ) -> Response:
        params = req.params()
        prompt, used = await self._prompt(req, params, field)
        room = await self._room(prompt, field)
        grammar = await _grammar(req, min(params.max_new_tokens, room))
        reply = api.Reply(self.model_id, chat)
        assert self._gate is not None, "the app runs without its lifespan"
        job = self._gate.admit(reply.id, prompt, params, req.stops(), grammar)
        if req.stream:
            return StreamingResponse(
                self._stream(job, reply, req.include_usage, used),
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
        usage = api.Usage.of(result)
        return JSONResponse(reply.whole(text, job.finish_reason(result), usage, used))

    async def _stream(
        self,
        job: Job,
        reply: api.Reply,
        include_usage: bool,
        used: list[dict[str, Any]] | None = None,
    ) -> AsyncIterator[str]:
        # Starlette cancels this generator when the client disconnects; `finally` then
        # cancels the generation (or takes the request out of the queue).
        try:
            if reply.chat:
                yield reply.chunk(None, first=True)
            while True:
                # A turn for the event loop before each read: with text queued faster than it
                # is sent, neither the read nor the send pauses, and a client's disconnect (a
                # cancel of this generator) would wait for the whole backlog
                # (tests/test_serve_load.py).
                await asyncio.sleep(0)
                try:
                    # Not wait_for: on Python 3.11 it drops a cancel that comes while an item is
                    # ready.
                    async with asyncio.timeout(KEEPALIVE_S):
                        kind, value = await job.events.get()
                except TimeoutError:
                    yield ": waiting\n\n"  # an SSE comment: clients skip it
                    continue
                if kind == "text":
                    yield reply.chunk(value)
                    continue
                if kind == "error":
                    yield api.sse(json.dumps(_engine_error(value).body()))
                else:
                    tail = job.text.finish()
                    if tail:
                        yield reply.chunk(tail)
                    yield reply.chunk(None, job.finish_reason(value), sources=used)
                    if include_usage:
                        yield reply.usage_chunk(api.Usage.of(value))
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


def _too_large() -> ApiError:
    return ApiError(413, f"The request body is over {MAX_BODY_BYTES >> 20} MiB.")


# The longest whole prompt build_prompt makes: an instruction and a passage at their limits.
MAX_PROMPT_CHARS = (
    MAX_INSTRUCTION_CHARS
    + MAX_CONTEXT_CHARS
    + len(PROMPT_WITH_INPUT_FORMAT.format(instruction="", input=""))
)


def _whole_prompt(text: str) -> bool:
    return text.startswith(INTRO_BLURB) and text.endswith(f"{RESPONSE_KEY}\n")


def _as_prompt(text: str, passage: str, field: str) -> str:
    """The model's prompt for an instruction (and a passage), or a whole Dolly prompt as is."""
    if _whole_prompt(text) and not passage:
        if len(text) > MAX_PROMPT_CHARS:  # before it is tokenized
            raise ApiError(
                400,
                f"The prompt is {len(text)} characters long; the limit is {MAX_PROMPT_CHARS}.",
                field,
            )
        return text
    try:
        return build_prompt(text, passage)
    except DollyError as e:
        raise ApiError(400, str(e), "context" if "context" in str(e) else field) from e


async def _grammar(req: api.GenerationRequest, budget: int) -> str | None:
    """The request's grammar, built on a worker thread: a large schema takes up to
    MAX_BUILD_S, and the event loop answers everyone else meanwhile."""
    if req.response_format is None or req.response_format.type == "text":
        return None
    try:
        async with asyncio.timeout(MAX_BUILD_S + 1):  # the build stops itself at MAX_BUILD_S
            return await asyncio.to_thread(req.grammar, budget)
    except TimeoutError:
        raise ApiError(
            400,
            f"response_format: the schema took over {MAX_BUILD_S:g} s to turn into a grammar; "
            "simplify it.",
            "response_format",
        ) from None


async def _wait_unless_gone(request: Request, job: Job) -> tuple[str, Any]:
    """The job's outcome; ("gone", None) as soon as the client has disconnected."""
    # The body has been read, so the next ASGI message is the disconnect: waiting for it
    # (as Starlette's StreamingResponse does) sees a client leave at once, where polling
    # `is_disconnected` saw it up to a poll late, after a short answer had run to its end.
    gone = asyncio.create_task(_disconnect(request))
    try:
        await asyncio.wait([job.task, gone], return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if job.task.done():
        return job.task.result() if not job.task.cancelled() else ("gone", None)
    return ("gone", None)


async def _disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


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


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    return internal_error().response()
