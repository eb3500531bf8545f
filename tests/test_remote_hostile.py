"""RemoteEngine against broken and hostile servers: a real HTTP server on 127.0.0.1
(http.server, one thread per connection) that sends what a given function writes. A line that
never ends, keep-alives without text, text past `max_tokens`: each ends at its bound with one
sentence, in bounded time and memory. And failover repeats the same request and checks it."""

from __future__ import annotations

import json
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import TOKENIZER_DIR

from dolly_desktop.errors import DollyError
from dolly_desktop.generation.engine import StopReason
from dolly_desktop.generation.engines import remote as remote_module
from dolly_desktop.generation.engines.remote import RemoteEngine
from dolly_desktop.generation.params import GenerationParams

KiB, MiB = 1 << 10, 1 << 20
RUN_FOR_S = 10.0  # the longest any hostile answer goes on (past every bound tested here)
MEMORY_BOUND = 4 * MiB  # the client's Python allocations while it reads (tracemalloc peak)


class Answer:
    """What one request gets: `write` sends bytes (False once the client has gone)."""

    def __init__(self, handler: BaseHTTPRequestHandler, stop: threading.Event) -> None:
        self.handler = handler
        self.stop = stop
        self.sent = 0
        self.t0 = time.monotonic()

    def write(self, data: bytes) -> bool:
        if self.stop.is_set() or time.monotonic() - self.t0 > RUN_FOR_S:
            return False
        try:
            self.handler.wfile.write(data)
            self.handler.wfile.flush()
        except OSError:  # the client hung up
            return False
        self.sent += len(data)
        return True

    def event(self, chunk: dict) -> bool:
        return self.write(f"data: {json.dumps(chunk)}\n\n".encode())

    def text(self, piece: str, finish: str | None = None) -> bool:
        return self.event({"choices": [{"index": 0, "text": piece, "finish_reason": finish}]})


class Hostile:
    """An OpenAI-shaped server on 127.0.0.1: `/v1/models` lists one model, and each
    `POST /v1/completions` gets status 200, an event stream, and whatever the next of
    `answers` writes; then the connection is closed (HTTP/1.0)."""

    def __init__(self, *answers: Callable[[Answer], None]) -> None:
        self.answers = list(answers)
        self.requests: list[dict] = []
        self.sent: list[int] = []  # bytes written to each answer
        self.stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                body = json.dumps({"data": [{"id": "dolly-v2-hostile"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                answer = outer.answers[min(len(outer.requests), len(outer.answers) - 1)]
                outer.requests.append(request)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                out = Answer(self, outer.stop)
                try:
                    answer(out)
                finally:
                    outer.sent.append(out.sent)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Hostile:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


@pytest.fixture
def measured() -> Iterator[Callable[[], int]]:
    """The peak of the Python heap since the fixture started (tracemalloc), in bytes."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    yield lambda: tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()


def fails_within(
    url: str, match: str, seconds: float, max_tokens: int = 50, **kwargs: float
) -> float:
    """Run one generation that must fail with `match`, within `seconds`; the time it took."""
    engine = RemoteEngine(url, timeout=kwargs.pop("timeout", 5), **kwargs)
    try:
        t0 = time.monotonic()
        with pytest.raises(DollyError, match=match) as caught:
            engine.generate(
                "Who is Dolly?", GenerationParams(greedy=True, max_new_tokens=max_tokens)
            )
        took = time.monotonic() - t0
    finally:
        engine.close()
    assert "\n" not in str(caught.value)  # one sentence
    assert took < seconds, f"took {took:.1f} s"
    return took


# --- a line that never ends


def endless_line(out: Answer) -> None:
    out.write(b'data: {"choices": [{"index": 0, "text": "')
    block = b"a" * (64 * KiB)
    while out.write(block):
        pass


def test_a_line_that_never_ends_is_cut_at_its_bound(measured):
    with Hostile(endless_line) as server:
        # 1,000 tokens: the stream may have over 2 MiB, a line 1 MiB.
        match = r"sent a line over 1 MiB long, which no answer needs"
        fails_within(server.url, match, 5, max_tokens=1000)
        peak = measured()
    assert peak < MEMORY_BOUND, f"{peak / MiB:.1f} MiB"
    (sent,) = server.sent
    assert sent < 16 * MiB  # the client hung up (what it sent sat in socket buffers)


# --- bytes that are not text, for ever


def keepalives(out: Answer) -> None:
    while out.write(b": keep-alive\n\n"):
        time.sleep(0.02)


def empty_chunks(out: Answer) -> None:
    while out.text(""):
        time.sleep(0.02)


def dripping_line(out: Answer) -> None:
    out.write(b"data: ")
    while out.write(b" "):
        time.sleep(0.02)


def text_then_keepalives(out: Answer) -> None:
    for word in ("Dolly", " is", " a"):
        out.text(word)
        time.sleep(0.3)
    keepalives(out)


@pytest.mark.parametrize("answer", [keepalives, empty_chunks, dripping_line, text_then_keepalives])
def test_no_text_for_token_timeout_ends_the_answer(answer, measured):
    """Bytes keep coming (so the read timeout never fires), but no text: the answer ends
    `token_timeout` after the last text, not never."""
    with Hostile(answer) as server:
        took = fails_within(server.url, r"sent no text for 1 s: it is stuck", 4, token_timeout=1)
        assert took >= 1
    assert measured() < MEMORY_BOUND


# --- more than max_tokens can be


def big_pieces(out: Answer) -> None:  # 100 MB of text, 1,000 characters a chunk
    piece = "x" * 1000
    for _ in range(100_000):
        if not out.text(piece):
            return


def tiny_pieces(out: Answer) -> None:  # one character a chunk, for ever
    while out.text("y"):
        pass


def chatter(out: Answer) -> None:  # chunks with no text, as fast as it goes
    while out.event({"choices": [], "usage": None, "padding": "z" * 200}):
        pass


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        (big_pieces, r"sent over 7296 characters for an answer of at most 50 tokens"),
        (tiny_pieces, r"sent over 116 pieces of text for an answer of at most 50 tokens"),
        (chatter, r"sent over 164 KiB for an answer of at most 50 tokens"),
    ],
)
def test_more_than_max_tokens_is_refused(answer, match, measured):
    with Hostile(answer) as server:
        fails_within(server.url, match, 5, max_tokens=50)
    assert measured() < MEMORY_BOUND
    (sent,) = server.sent
    assert sent < 16 * MiB  # not 100 MB: the client hung up


def test_bounds_leave_room_for_any_answer():
    """A legitimate answer of `max_tokens` tokens fits with room to spare: every token the
    longest of Dolly's vocabulary as JSON, each in its own chunk with OpenAI's usual fields."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(TOKENIZER_DIR / "tokenizer.json"))
    longest = max(
        (tokenizer.decode([i], skip_special_tokens=False) for i in range(50280)),
        key=lambda t: len(json.dumps(t)),
    )
    chunk = {
        "id": "cmpl-0123456789abcdef0123456789abcdef",
        "object": "text_completion",
        "created": 1700000000,
        "model": "dolly-v2-12b-int8",
        "choices": [{"index": 0, "text": longest, "finish_reason": None, "logprobs": None}],
    }
    line = len(f"data: {json.dumps(chunk)}\n\n".encode())
    assert 2 * line < remote_module.STREAM_BYTES_PER_TOKEN
    assert 1024 * len(json.dumps(longest)) < remote_module.MAX_LINE_BYTES  # in one chunk
    assert len(longest) <= 8 * remote_module.TEXT_CHARS_PER_TOKEN  # an average of 64 a token


# --- failover repeats the same request, and checks what it repeats


def breaks_off(out: Answer) -> None:
    for word in ("Dolly", " is", " a", " large"):
        out.text(word)
    # then the connection closes: no finish reason, no [DONE]


def finishes(words: tuple[str, ...]) -> Callable[[Answer], None]:
    def answer(out: Answer) -> None:
        for word in words[:-1]:
            out.text(word)
        out.text(words[-1], finish="length")
        out.event({"choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 7}})
        out.write(b"data: [DONE]\n\n")

    return answer


def test_the_next_server_repeats_the_answer_and_goes_on():
    whole = ("Dolly", " is", " a", " large", " language", " model", ".")
    sampled = GenerationParams(max_new_tokens=7, temperature=0.7)  # no seed given
    said: list[str] = []
    with Hostile(breaks_off) as one, Hostile(finishes(whole)) as two:
        engine = RemoteEngine(f"{one.url},{two.url}", timeout=5, notify=said.append)
        shown: list[str] = []
        result = engine.generate("Who is Dolly?", sampled, shown.append)
        engine.close()
    assert result.text == "".join(shown) == "Dolly is a large language model."
    assert result.stop_reason is StopReason.LENGTH and result.generated_tokens == 7
    assert "ended the response early" in said[0] and "Continuing" in said[0]
    # The same request, seed included: a seed was chosen for the answer, so the next server
    # can repeat it.
    assert one.requests == two.requests
    assert isinstance(one.requests[0]["seed"], int)
    assert one.requests[0]["prompt"].endswith("Who is Dolly?\n\n### Response:\n")


def test_a_next_server_with_another_answer_cannot_continue_it():
    with Hostile(breaks_off) as one, Hostile(finishes(("Dolly", " was", " a", " sheep"))) as two:
        engine = RemoteEngine(f"{one.url},{two.url}", timeout=5)
        shown: list[str] = []
        with pytest.raises(DollyError, match="gives a different answer from the one shown"):
            engine.generate("Who is Dolly?", GenerationParams(greedy=True), shown.append)
        engine.close()
    assert "".join(shown).startswith("Dolly")  # what was shown stays; nothing else is added
    assert "was" not in "".join(shown)


# --- a model list that never ends


def test_a_model_list_without_end_is_read_within_bounds(measured):
    class Endless(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"data": [{"id": "')
            block, t0 = b"d" * (64 * KiB), time.monotonic()
            try:
                while time.monotonic() - t0 < RUN_FOR_S:
                    self.wfile.write(block)
            except OSError:
                pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        t0 = time.monotonic()
        with pytest.raises(DollyError, match="did not answer with a model list"):
            RemoteEngine(f"http://127.0.0.1:{httpd.server_address[1]}/v1", timeout=5)
        assert time.monotonic() - t0 < 5
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert measured() < MEMORY_BOUND
