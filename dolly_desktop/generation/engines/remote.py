"""A Dolly model on another machine, behind an OpenAI-compatible API, used like a local Engine.

It streams `/completions` with httpx, so it works against `dolly-desktop serve` (base URL
`http://HOST:PORT/v1`) and OpenVINO Model Server (`http://HOST:PORT/v3`): the base URL is taken
as given, prefix included. It sends the whole Dolly prompt (template applied here), which both
take as is, and asks for special tokens in the text so that `### End` can be seen and the
stream ended there even where the server's end token is only EOS.

Same duck-typed interface as core.engine.Engine, as the GUI worker and the CLI use it:
`model_dir` (the URL), `device` ("remote"), `load_s`, `context_length`, `generate()`,
`generate_from_prompt()`, `cancel()` and `progress()`, callable from any thread with no event
loop. Differences: `GenerationResult.token_ids` holds one placeholder -1 per generated token
(the API gives counts, not ids); `progress()` counts streamed pieces, about one per token;
`stop_token_ids` cannot be sent and is refused.

Failover repeats, it does not re-prompt: when a server breaks off, the next one is sent the same
request (same prompt, budget and seed; a sampled answer without a seed gets one here for that),
and the text it streams is checked against what was already shown and then goes on from there.
A continuation prompt (Dolly's prompt plus the text so far) cannot give the same answer: `serve`
wraps any prompt that does not end with `### Response:` in the template again, and the shown
text re-tokenized is not the tokens that were generated.

A hostile or broken server cannot exhaust the client: a line of the stream is at most
MAX_LINE_BYTES; the stream's bytes, its text and its pieces at most what `max_tokens` needs
(_Reader); and `token_timeout` seconds may pass without text (keep-alive comments do not
count). Model lists and error bodies are read up to MAX_BODY_BYTES; compressed answers are
refused. Each bound gives one sentence, and the answer moves on to the next server if any.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import httpx

from dolly_desktop.errors import DollyError
from dolly_desktop.generation.engine import (
    REMOTE,
    EngineBase,
    GenerationResult,
    ModelRef,
    StopReason,
    TextCallback,
)
from dolly_desktop.generation.params import GenerationParams
from dolly_desktop.generation.prompt import END_KEY
from dolly_desktop.generation.text import StreamText

log = logging.getLogger(__name__)


DOLLY_CONTEXT = 2048  # when the server does not say (OVMS does not)
CONNECT_TIMEOUT_S = 5.0
UNKNOWN_TOKEN_ID = -1
# What a server may send (docs/remote.md, "Bounds"). One SSE line carries one chunk: a few
# tokens' text (Dolly's longest token is 512 bytes, 514 as JSON) and ~300 bytes of fields.
MAX_LINE_BYTES = 1 << 20
# A whole stream: chunk fields, the role/finish/usage chunks and keep-alive comments fit in the
# fixed part; per token asked for, 2 KiB is 2.5x the longest token's chunk and ~10x a usual one.
STREAM_BYTES_FIXED = 64 << 10
STREAM_BYTES_PER_TOKEN = 2 << 10
# The answer's text, and how many pieces it comes in (a server sends about one per token): Dolly
# averages ~4 characters a token. These also bound the client's work on the text, which grows
# with pieces x length (StreamText cleans the whole text at each piece).
TEXT_CHARS_FIXED = 4096
TEXT_CHARS_PER_TOKEN = 64
PIECES_FIXED = 16
PIECES_PER_TOKEN = 2
# Longest time without text while bytes still come (serve's queue sends a comment every 5 s):
# long enough to wait for a busy server's batch to free a place, short of forever.
TOKEN_TIMEOUT_S = 300.0
MAX_BODY_BYTES = 1 << 20  # a model list or an error body
_EOL = re.compile(rb"\r\n|\r|\n")


class RemoteEngine(EngineBase):
    """One model on an OpenAI-compatible server. One generation at a time; cancel from any
    thread (it shuts the streaming connection, which also stops the server's generation)."""

    def __init__(
        self,
        url: str | Sequence[str],
        api_key: str | None = None,
        timeout: float = 60.0,
        model: str | None = None,
        notify: TextCallback | None = None,
        token_timeout: float = TOKEN_TIMEOUT_S,
    ) -> None:
        """Connect and find the model (first of /models, or `model`). `url` may name several
        servers (a list, or one string with commas): the first that answers is used, and an
        answer moves on to the next when its server refuses or dies mid-answer. `timeout` is
        the longest wait for the next bit of a response before giving up; `token_timeout`
        the longest wait for the next bit of text while other bytes (keep-alives) come."""
        super().__init__()
        self.notify = notify
        urls = url.split(",") if isinstance(url, str) else list(url)
        self.bases = [_base_url(u) for u in urls if u.strip()]
        if not self.bases:
            raise DollyError("Give the address of at least one server.")
        self.device = REMOTE
        self.timeout = timeout
        self.token_timeout = token_timeout
        self._wanted = model
        self._client = _client(api_key, timeout)
        self._response: httpx.Response | None = None
        self._meter: _Meter | None = None
        t0 = time.perf_counter()
        try:
            self._use(self._first_answering(self.bases))
        except BaseException:
            self._client.close()
            raise
        self.load_s = time.perf_counter() - t0
        log.info("using %s at %s (%.2f s to answer)", self.model_id, self.base, self.load_s)

    def _first_answering(self, bases: Sequence[str]) -> tuple[str, dict[str, Any]]:
        """The first of `bases` whose model list names the model; the last error if none."""
        error: DollyError | None = None
        for base in bases:
            try:
                return base, _find_model(self._client, base, self._wanted)
            except DollyError as e:
                error = e
                if len(bases) > 1:
                    self._say(f"{e} Trying the next server.")
        assert error is not None
        raise error

    def _use(self, found: tuple[str, dict[str, Any]]) -> None:
        self.base, card = found
        self.model_id: str = card["id"]
        self.model = ModelRef(name=self.model_id, precision=REMOTE, folder=self.base)
        ctx = card.get("max_model_len")
        self.context_length = ctx if isinstance(ctx, int) and ctx > 0 else DOLLY_CONTEXT

    def _say(self, sentence: str) -> None:
        log.warning("%s", sentence)
        if self.notify is not None:
            self.notify(sentence)

    @classmethod
    def test(cls, url: str, api_key: str | None = None, timeout: float = 5.0) -> str:
        """Check a server quickly (its model list): one sentence to show, or DollyError."""
        base = _base_url(url)
        with _client(api_key, timeout) as client:
            t0 = time.perf_counter()
            card = _find_model(client, base, None)
            ms = (time.perf_counter() - t0) * 1000
        return f"{base} answered in {ms:.0f} ms and serves {card['id']}."

    def count_tokens(self, text: str) -> int:
        """An estimate (the API has no tokenizer): GPT-NeoX averages about 4 bytes a token on
        English text."""
        return max(1, round(len(text.encode()) / 4))

    def close(self) -> None:
        self._client.close()

    def progress(self) -> tuple[int, float]:
        """Pieces streamed so far (about one per token) and their rate; any thread."""
        m = self._meter
        return (m.count, m.rate(m.count)) if m is not None else (0, 0.0)

    def cancel(self) -> None:
        """Stop the running generation now: its connection is shut, which wakes the reader
        at once even while it waits for the server."""
        super().cancel()
        response = self._response
        if response is None:
            return
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):  # already closed
                sock.shutdown(socket.SHUT_RDWR)

    def _run(
        self,
        prompt: str,
        params: GenerationParams,
        on_text: TextCallback | None,
        stop_token_ids: set[int] | None,
        grammar: str | None,
    ) -> GenerationResult:
        if stop_token_ids:
            raise DollyError("A remote server cannot be asked to stop at token ids.")
        if grammar is not None:  # a server takes a JSON schema (response_format), not EBNF
            raise DollyError("A remote server cannot be given a grammar.")
        if not params.greedy and params.seed is None:
            # A seed of our own, so that a server taking over repeats the same answer.
            params = replace(params, seed=secrets.randbelow(2**31))
        meter = self._meter = _Meter()
        answer = _Answer()
        usage: dict[str, Any] = {}
        finish: str | None = None
        try:
            while True:
                try:
                    usage, finish = self._stream(prompt, params, on_text, answer, meter)
                    break
                except _ServerLost as lost:
                    # The next server is asked the same and repeats the answer so far, which is
                    # checked and skipped: it goes on from where this one stopped.
                    following = self.bases[self.bases.index(self.base) + 1 :]
                    if self._cancel.is_set() or not following:
                        raise lost.error from None
                    self._say(f"{lost.error} Continuing on the next server.")
                    self._use(self._first_answering(following))
        finally:
            self._response = None
            self._meter = None
        text = answer.text
        tail = text.finish()
        if tail and on_text is not None:
            on_text(tail)
        if text.stopped or finish == "stop":
            reason = StopReason.END
        elif self._cancel.is_set():
            reason = StopReason.CANCELLED
        else:
            reason = StopReason.LENGTH
        n = usage.get("completion_tokens")  # the whole answer's: the last server repeated it
        n = n if isinstance(n, int) and n >= 0 else meter.count
        t_end = time.perf_counter()
        return GenerationResult(
            text=text.text,
            token_ids=[UNKNOWN_TOKEN_ID] * n,
            input_tokens=int(usage.get("prompt_tokens") or 0),
            stop_reason=reason,
            ttft_s=(meter.first_at or t_end) - meter.t0,
            total_s=t_end - meter.t0,
            tokens_per_s=meter.rate(n),
            extra={"server": self.base, "model": self.model_id, "finish_reason": finish},
        )

    def _stream(
        self,
        prompt: str,
        params: GenerationParams,
        on_text: TextCallback | None,
        answer: _Answer,
        meter: _Meter,
    ) -> tuple[dict[str, Any], str | None]:
        """One server's part of an answer: its usage and finish reason. The server first
        repeats `answer.streamed` (what earlier servers sent), which is checked, not shown.
        _ServerLost when it refuses, breaks off or goes beyond a bound, so that the next
        server can take over."""
        usage: dict[str, Any] = {}
        finish: str | None = None
        complete = False  # [DONE], a finish reason or the end of the answer was seen
        known = answer.streamed  # to be repeated by this server
        repeated = 0  # how much of it this server has repeated
        try:
            with self._client.stream(
                "POST", f"{self.base}/completions", json=self._body(prompt, params)
            ) as response:
                self._response = response
                if response.status_code != 200:
                    body = _read_body(self.base, response, self.timeout)
                    error = _refused(self.base, response, body)
                    if response.status_code in (429, 500, 502, 503, 504):
                        raise _ServerLost(error)
                    raise error
                _identity(self.base, response)
                reader = _Reader(
                    self.base, response, params.max_new_tokens, self.token_timeout, self._cancel
                )
                for line in reader.lines():
                    event = _event(line, self.base)
                    if event is None:
                        continue
                    if event == "[DONE]":
                        complete = True
                        break
                    if isinstance(event.get("usage"), dict):
                        usage = event["usage"]
                    for choice in _choices(event, self.base):
                        piece = choice.get("text") or ""
                        if piece:
                            reader.text(piece)
                        if piece and repeated < len(known):
                            head = piece[: len(known) - repeated]
                            if known[repeated : repeated + len(head)] != head:
                                raise _ServerLost(_diverged(self.base))
                            repeated += len(head)
                            piece = piece[len(head) :]
                        if piece:
                            answer.streamed += piece
                            meter.tick()
                            delta = answer.text.feed(piece)
                            if delta and on_text is not None:
                                on_text(delta)
                        finish = choice.get("finish_reason") or finish
                    if answer.text.stopped:  # `### End` in the text: the answer is complete
                        complete = True
                        break
                complete = complete or finish is not None
                if not complete and not self._cancel.is_set():
                    raise _ServerLost(
                        DollyError(f"The server at {self.base} ended the response early.")
                    )
                if complete and repeated < len(known):  # a shorter answer than the one shown
                    raise _ServerLost(_diverged(self.base))
        except httpx.HTTPError as e:
            if not self._cancel.is_set():
                raise _ServerLost(_network_error(self.base, self.timeout, e)) from e
        return usage, finish

    def _body(self, prompt: str, p: GenerationParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model_id,
            "prompt": prompt,
            "stream": True,
            "stream_options": {"include_usage": True},  # token counts in the last chunk
            "max_tokens": p.max_new_tokens,
            "repetition_penalty": p.repetition_penalty,
            # OVMS: keep `### End` in the text, so the answer's end is seen (see module doc).
            "skip_special_tokens": False,
            "stop": [END_KEY],
        }
        if p.greedy:
            body["temperature"] = 0
        else:
            body.update(temperature=p.temperature, top_p=p.top_p, top_k=p.top_k or -1)
            if p.seed is not None:
                body["seed"] = p.seed
        return body


class _ServerLost(Exception):
    """A server refused or broke off; `error` is the sentence if no other server takes over."""

    def __init__(self, error: DollyError) -> None:
        super().__init__(str(error))
        self.error = error


class _Answer:
    """One answer over every server: what they streamed, and its clean text."""

    def __init__(self) -> None:
        self.streamed = ""
        self.text = StreamText()


class _Reader:
    """A response's server-sent-event lines, within bounds for an answer of at most `tokens`
    tokens: each line at most MAX_LINE_BYTES, the stream, its text and its pieces at most what
    that many tokens need, and at most `token_timeout` seconds without text (`text(piece)` is
    told of each piece). Beyond one, _ServerLost with its sentence."""

    def __init__(
        self,
        base: str,
        response: httpx.Response,
        tokens: int,
        token_timeout: float,
        cancel: threading.Event,
    ) -> None:
        self.base = base
        self.response = response
        self.tokens = tokens
        self.max_bytes = STREAM_BYTES_FIXED + STREAM_BYTES_PER_TOKEN * tokens
        self.max_chars = TEXT_CHARS_FIXED + TEXT_CHARS_PER_TOKEN * tokens
        self.max_pieces = PIECES_FIXED + PIECES_PER_TOKEN * tokens
        self.token_timeout = token_timeout
        self.cancel = cancel
        self.text_at = time.monotonic()
        self.chars = 0
        self.pieces = 0

    def text(self, piece: str) -> None:
        self.text_at = time.monotonic()
        self.chars += len(piece)
        self.pieces += 1
        if self.chars > self.max_chars:
            raise self._lost(f"sent over {self.max_chars} characters")
        if self.pieces > self.max_pieces:
            raise self._lost(f"sent over {self.max_pieces} pieces of text")

    def lines(self) -> Iterator[str]:
        line = bytearray()
        received = 0
        for chunk in self.response.iter_raw():
            if self.cancel.is_set():
                return
            received += len(chunk)
            if received > self.max_bytes:
                raise self._lost(f"sent over {_size(self.max_bytes)}")
            if time.monotonic() - self.text_at > self.token_timeout:
                raise _ServerLost(
                    DollyError(
                        f"The server at {self.base} sent no text for {self.token_timeout:g} s: "
                        "it is stuck or too busy."
                    )
                )
            start = 0
            for end in _EOL.finditer(chunk):
                line += chunk[start : end.start()]
                self._check(line)
                yield line.decode("utf-8", "replace")
                line.clear()
                start = end.end()
                if self.cancel.is_set():
                    return
            line += chunk[start:]
            self._check(line)
        if line:
            yield line.decode("utf-8", "replace")

    def _check(self, line: bytearray) -> None:
        if len(line) > MAX_LINE_BYTES:
            raise _ServerLost(
                DollyError(
                    f"The server at {self.base} sent a line over {_size(MAX_LINE_BYTES)} long, "
                    "which no answer needs: stopped reading it."
                )
            )

    def _lost(self, what: str) -> _ServerLost:
        return _ServerLost(
            DollyError(
                f"The server at {self.base} {what} for an answer of at most {self.tokens} "
                "tokens: stopped reading it."
            )
        )


def _size(n: int) -> str:
    return f"{n / (1 << 20):.3g} MiB" if n >= 1 << 20 else f"{n / 1024:.3g} KiB"


def _diverged(base: str) -> DollyError:
    return DollyError(
        f"The server at {base} gives a different answer from the one shown, so it cannot "
        "continue it."
    )


def _identity(base: str, response: httpx.Response) -> None:
    """Refuse a compressed body: it was not asked for, and its size would not be bounded."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise DollyError(f"The server at {base} sent a compressed ({encoding}) answer.")


def _read_body(base: str, response: httpx.Response, timeout: float) -> bytes:
    """At most MAX_BODY_BYTES of a response's body, within `timeout` seconds in all."""
    _identity(base, response)
    deadline = time.monotonic() + timeout
    body = bytearray()
    for chunk in response.iter_raw():
        body += chunk
        if len(body) > MAX_BODY_BYTES or time.monotonic() > deadline:
            break
    return bytes(body[:MAX_BODY_BYTES])


class _Meter:
    """Arrival times of streamed pieces: time to first, and the rate after it."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.count = 0
        self.first_at: float | None = None
        self.last_at: float | None = None

    def tick(self) -> None:
        now = time.perf_counter()
        if self.first_at is None:
            self.first_at = now
        self.last_at = now
        self.count += 1

    def rate(self, tokens: int) -> float:
        """Tokens after the first over the time they took, as Engine reports it."""
        if tokens < 2 or self.first_at is None or self.last_at is None:
            return 0.0
        dt = self.last_at - self.first_at
        return (tokens - 1) / dt if dt > 0 else 0.0


def _base_url(url: str) -> str:
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DollyError(
            f"{url!r} is not a server address: give one like http://HOST:8000/v1 "
            "(or .../v3 for OpenVINO Model Server)."
        )
    return url


def _client(api_key: str | None, timeout: float) -> httpx.Client:
    headers = {"Accept-Encoding": "identity"}  # see _identity
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return httpx.Client(
        headers=headers, timeout=httpx.Timeout(timeout, connect=min(CONNECT_TIMEOUT_S, timeout))
    )


def _find_model(client: httpx.Client, base: str, wanted: str | None) -> dict[str, Any]:
    """The model card to use: `wanted`, else the only one, else the first named Dolly."""
    timeout = client.timeout.read or 0
    try:
        with client.stream("GET", f"{base}/models") as response:
            body = _read_body(base, response, timeout)
    except httpx.HTTPError as e:
        raise _network_error(base, timeout, e) from e
    if response.status_code != 200:
        raise _refused(base, response, body)
    try:
        cards = [c for c in json.loads(body)["data"] if isinstance(c.get("id"), str)]
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise DollyError(f"{base}/models did not answer with a model list.") from e
    if wanted is not None:
        card = next((c for c in cards if c["id"] == wanted), None)
        if card is None:
            raise DollyError(f"The server at {base} has no model {wanted!r}.")
        return card
    if not cards:
        raise DollyError(f"The server at {base} serves no model.")
    return next((c for c in cards if "dolly" in c["id"].lower()), cards[0])


def _event(line: str, base: str) -> dict[str, Any] | str | None:
    """One server-sent event's data: a dict, "[DONE]", or None for anything else."""
    if not line.startswith("data:"):
        return None  # blank separators, comments (keep-alives), other fields
    data = line[5:].strip()
    if data == "[DONE]":
        return data
    try:
        event = json.loads(data)
    except (ValueError, RecursionError) as e:  # RecursionError: nested too deep
        raise DollyError(f"The server at {base} sent something that is not JSON.") from e
    if not isinstance(event, dict):
        return None
    if "error" in event:
        raise DollyError(f"The server at {base} failed: {_message(event)}")
    return event


def _choices(event: dict[str, Any], base: str) -> list[dict[str, Any]]:
    """An event's choices, each with `text` a string (or absent)."""
    choices = event.get("choices") or []
    if not isinstance(choices, list) or not all(
        isinstance(c, dict) and isinstance(c.get("text") or "", str) for c in choices
    ):
        raise DollyError(f"The server at {base} sent a chunk that is not a completion.")
    return choices


def _message(body: Any) -> str:
    err = body.get("error") if isinstance(body, dict) else None
    msg = err.get("message") if isinstance(err, dict) else err
    return str(msg or body).strip()


def _refused(base: str, response: httpx.Response, body: bytes) -> DollyError:
    """One sentence for an HTTP error status (`body`: the start of its body)."""
    try:
        detail = _message(json.loads(body))[:500]
    except (ValueError, RecursionError):
        detail = body.decode("utf-8", "replace").strip()[:200] or response.reason_phrase
    status = response.status_code
    if status in (401, 403):
        return DollyError(f"The server at {base} refused the API key: {detail}")
    if status == 404:
        return DollyError(
            f"{response.request.url} was not found: check the server address, which should "
            "end in /v1 (dolly-desktop serve) or /v3 (OpenVINO Model Server)."
        )
    if status == 429:
        return DollyError(f"The server at {base} is busy: {detail}")
    return DollyError(f"The server at {base} answered {status}: {detail}")


def _network_error(base: str, timeout: float, e: httpx.HTTPError) -> DollyError:
    """One sentence for a failed connection."""
    if isinstance(e, httpx.ConnectTimeout):
        return DollyError(f"The server at {base} did not accept a connection in time.")
    if isinstance(e, httpx.ConnectError):
        return DollyError(f"Cannot connect to the server at {base}: is it running?")
    if isinstance(e, httpx.ReadTimeout):
        return DollyError(f"The server at {base} sent nothing for {timeout:g} s: it is stuck.")
    if isinstance(e, (httpx.RemoteProtocolError, httpx.ReadError)):
        return DollyError(f"The connection to {base} broke in the middle of the response.")
    return DollyError(f"The request to {base} failed: {e}")
