"""`dolly-desktop serve` against what a hostile web page or client sends: raw HTTP as a browser
or an attacker would send it, to a real server process on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from serving import Served, free_port, serve_process

from dolly_desktop import paths
from dolly_desktop.generation.engine import EngineBase, GenerationResult, ModelRef
from dolly_desktop.server.app import OpenAIServer

KEY = "s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}
READ_TIMEOUT_S = 2
APP_ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def served(tiny_models) -> Iterator[Served]:
    args = ["--api-key", KEY, "--allow-origin", APP_ORIGIN, "--allow-host", "dolly.lan"]
    with serve_process(tiny_models["INT4"], *args, "--read-timeout", str(READ_TIMEOUT_S)) as served:
        yield served


@pytest.fixture
def http(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, headers=AUTH, timeout=30) as client:
        yield client


def app_log() -> str:
    log = paths.log_dir() / "dolly-desktop.log"
    return log.read_text(errors="replace") if log.exists() else ""


def generations_logged() -> int:
    return app_log().count("stopped:")  # one metrics line per generation that ran


def assert_one_sentence(r: httpx.Response, status: int, param: str | None = None) -> str:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    message = error["message"]
    assert message.endswith(".") and "\n" not in message and len(message) < 200, message
    for internal in ("Traceback", 'File "', "Error(", ".py", "0x"):
        assert internal not in message, message
    if param is not None:
        assert error["param"] == param
    return message


# --- a web page driving the local server


def test_a_web_page_cannot_run_a_generation(served, http):
    before = generations_logged()
    body = json.dumps({"prompt": "hi", "max_tokens": 4})
    # What a page's fetch() or <form> sends without a CORS preflight.
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        r = http.post("/completions", content=body, headers={"Content-Type": kind})
        assert_one_sentence(r, 415)
        r = http.post(
            "/completions",
            content=body,
            headers={"Content-Type": kind, "Origin": "https://evil.example"},
        )
        assert r.status_code in (403, 415)
        assert "access-control-allow-origin" not in r.headers
    r = http.post("/completions", content=body, headers={"Content-Type": ""})
    assert_one_sentence(r, 415)
    # Even JSON (which a browser sends only after a preflight) from a page not allowed.
    r = http.post("/completions", json={"prompt": "hi"}, headers={"Origin": "https://evil.example"})
    assert_one_sentence(r, 403)
    assert "access-control-allow-origin" not in r.headers
    r = http.options(
        "/completions",
        headers={
            "Origin": "https://evil.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert r.status_code >= 400 and "access-control-allow-origin" not in r.headers
    time.sleep(0.3)
    assert generations_logged() == before  # nothing ran


def test_an_allowed_origin_gets_cors_headers(served, http):
    r = http.options(
        "/completions",
        headers={
            "Origin": APP_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == APP_ORIGIN
    r = http.post(
        "/completions", json={"prompt": "hi", "max_tokens": 2}, headers={"Origin": APP_ORIGIN}
    )
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == APP_ORIGIN


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("attacker.example", 421),
        ("attacker.example:{port}", 421),
        ("localhost.attacker.example", 421),
        ("127.0.0.1.nip.io:{port}", 421),
        ("localhost:{port}", 200),
        ("LOCALHOST", 200),
        ("127.0.0.1:{port}", 200),
        ("[::1]:{port}", 200),
        ("dolly.lan:{port}", 200),  # --allow-host
        ("192.168.1.20:{port}", 200),  # an address cannot be rebound
    ],
)
def test_host_header_must_be_a_name_the_server_answers_to(served, http, host, status):
    port = httpx.URL(served.url).port
    r = http.get("/models", headers={"Host": host.format(port=port)})
    if status == 200:
        assert r.status_code == 200, r.text
    else:
        assert "--allow-host" in assert_one_sentence(r, status)


def raw_request(served: Served, data: bytes, read: bool = True, timeout: float = 10) -> bytes:
    url = httpx.URL(served.url)
    with socket.create_connection((url.host, url.port), timeout=timeout) as s:
        s.sendall(data)
        if not read:
            return b""
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_a_request_without_host_is_refused(served):
    answer = raw_request(served, b"GET /v1/models HTTP/1.0\r\nAuthorization: Bearer s3cret\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400") and b"no Host header" in answer


# --- bodies that used to give 500s


def test_hostile_json_gets_400_with_one_sentence(served, http):
    errors_before = app_log().count("ERROR")
    headers = {"Content-Type": "application/json"}
    deep = b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    for body in (
        deep,
        b'{"prompt": "\\ud800"}',  # a lone surrogate
        b'{"prompt": "x\\udfff"}',
        b'{"prompt": "\xed\xa0\x80"}',  # a surrogate in (invalid) UTF-8
        b'{"prompt": "\xff"}',
        b"",
    ):
        r = http.post("/completions", content=body, headers=headers)
        assert "not valid JSON" in assert_one_sentence(r, 400)
    r = http.post("/chat/completions", content=b'{"messages": "\\ud800"}', headers=headers)
    assert_one_sentence(r, 400)
    assert app_log().count("ERROR") == errors_before
    assert "Traceback" not in served.stderr()


BAD = [
    ({"prompt": "hi", "n": True}, "n"),
    ({"prompt": "hi", "n": 1.0}, "n"),
    ({"prompt": "hi", "n": "1"}, "n"),
    ({"prompt": "hi", "n": 2}, "n"),
    ({"prompt": "hi", "logprobs": 1}, "logprobs"),
    ({"prompt": "hi", "logprobs": 0}, "logprobs"),
    ({"prompt": "hi", "stop": ["x" * 201]}, "stop"),
]


@pytest.mark.parametrize(("body", "param"), BAD)
def test_refused_fields(http, body, param):
    assert_one_sentence(http.post("/completions", json=body), 400, param)


def test_null_fields_mean_the_defaults(http):
    nulls = dict.fromkeys(
        ("temperature", "top_p", "top_k", "seed", "stop", "n", "logprobs", "stream", "model")
    )
    r = http.post("/completions", json={"prompt": "hi", "max_tokens": 2, **nulls})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 2


def test_chat_logprobs_are_refused(http):
    messages = [{"role": "user", "content": "hi"}]
    for extra in ({"logprobs": True}, {"top_logprobs": 2}):
        r = http.post("/chat/completions", json={"messages": messages, **extra})
        assert "Log probabilities" in assert_one_sentence(r, 400)
    ok = http.post("/chat/completions", json={"messages": messages, "logprobs": False, "n": 1})
    assert ok.status_code == 200


def test_a_whole_prompt_is_measured_before_it_is_tokenized(http):
    from dolly_desktop.generation.prompt import PROMPT_FORMAT

    prompt = PROMPT_FORMAT.format(instruction="word " * 30_000)  # 150 000 characters
    r = http.post("/completions", json={"prompt": prompt})
    assert "characters" in assert_one_sentence(r, 400, "prompt")


def test_an_announced_oversized_body_is_refused_unread(served):
    head = (
        b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer s3cret\r\n"
        b"Content-Type: application/json\r\nContent-Length: 5000000\r\n\r\n"
    )
    t0 = time.monotonic()
    url = httpx.URL(served.url)
    with socket.create_connection((url.host, url.port), timeout=10) as s:
        s.sendall(head)  # and no body at all
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413") and time.monotonic() - t0 < 1


# --- clients that go away or never finish


def test_a_client_leaving_mid_body_is_no_error(served):
    errors_before = app_log().count("ERROR")
    head = (
        b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer s3cret\r\n"
        b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"prompt": '
    )
    for _ in range(3):
        raw_request(served, head, read=False)
    time.sleep(0.5)
    assert app_log().count("ERROR") == errors_before
    stderr = served.stderr()
    assert "Traceback" not in stderr and "ERROR" not in stderr


def test_slow_clients_are_cut_off(served):
    url = httpx.URL(served.url)
    socks = [socket.create_connection((url.host, url.port), timeout=10) for _ in range(10)]
    try:
        for i, s in enumerate(socks):
            if i % 3 == 0:
                continue  # connects and says nothing
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        t0 = time.monotonic()
        closed: set[int] = set()
        while len(closed) < len(socks) and time.monotonic() - t0 < READ_TIMEOUT_S + 4:
            for i, s in enumerate(socks):
                if i in closed:
                    continue
                try:
                    s.sendall(b"X-Slow: 1\r\n")  # a header line now and then
                    s.settimeout(0.05)
                    if s.recv(1) == b"":
                        closed.add(i)
                except TimeoutError:
                    pass
                except OSError:
                    closed.add(i)
            time.sleep(0.3)
        assert len(closed) == len(socks), f"{len(socks) - len(closed)} slow sockets still open"
        assert READ_TIMEOUT_S - 0.5 < time.monotonic() - t0 < READ_TIMEOUT_S + 4
    finally:
        for s in socks:
            s.close()


def test_a_slow_body_gets_408(served):
    head = (
        b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer s3cret\r\n"
        b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"prompt": '
    )
    t0 = time.monotonic()
    answer = raw_request(served, head, timeout=READ_TIMEOUT_S + 10)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"did not arrive within" in answer
    assert READ_TIMEOUT_S - 0.5 < time.monotonic() - t0 < READ_TIMEOUT_S + 7


# --- the API key


def test_the_bearer_scheme_is_case_insensitive(http):
    for scheme in ("bearer", "BEARER", "Bearer"):
        r = http.get("/models", headers={"Authorization": f"{scheme} {KEY}"})
        assert r.status_code == 200
    for value in (f"Basic {KEY}", f"Bearer {KEY}x", f"Bearer{KEY}", KEY, "bearer", ""):
        r = http.get("/models", headers={"Authorization": value})
        assert_one_sentence(r, 401)


class _FailingEngine(EngineBase):
    """Enough of an engine for the routes; generation fails with internals in the message."""

    model = ModelRef("stub", "INT4", "/nowhere")
    device = "CPU"
    load_s = 0.0
    context_length = 2048

    def count_tokens(self, text: str) -> int:
        if "explode" in text:
            raise RuntimeError("tokenizer.cpp:7: secret internals at 0xdeadbeef")
        return len(text.split())

    def progress(self) -> tuple[int, float]:
        return (0, 0.0)

    def _run(self, prompt, params, on_text, stop_token_ids, grammar) -> GenerationResult:
        raise RuntimeError("Exception from src/plugin.cpp:42: secret internals at 0xdeadbeef")


@pytest.fixture
def in_process() -> Iterator[str]:
    """The app on a stub engine, run by uvicorn in a thread on 127.0.0.1."""
    server = OpenAIServer(_FailingEngine(), "stub", api_key=KEY, queue=1)
    port = free_port()
    config = server.uvicorn_config(READ_TIMEOUT_S)
    config.host, config.port = "127.0.0.1", port
    userver = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(userver.serve()))
    thread.start()
    try:
        while not userver.started:
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        userver.should_exit = True
        thread.join(10)


def test_the_key_is_compared_in_constant_time(in_process, monkeypatch):
    calls: list[tuple[bytes, bytes]] = []
    real = secrets.compare_digest

    def recording(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(secrets, "compare_digest", recording)
    assert httpx.get(f"{in_process}/models", headers=AUTH).status_code == 200
    assert (
        httpx.get(f"{in_process}/models", headers={"Authorization": "Bearer no"}).status_code == 401
    )
    assert calls == [(KEY.encode(), KEY.encode()), (b"no", KEY.encode())]


def test_a_failing_engine_gives_a_500_without_internals(in_process, caplog):
    r = httpx.post(f"{in_process}/completions", json={"prompt": "hi"}, headers=AUTH, timeout=10)
    message = assert_one_sentence(r, 500)
    assert "secret" not in message and "plugin" not in message
    errors = [rec for rec in caplog.records if rec.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].exc_info  # the details are in the log, once


def test_an_unexpected_failure_in_a_route_is_one_sentence_and_one_log_entry(in_process, caplog):
    r = httpx.post(f"{in_process}/completions", json={"prompt": "explode"}, headers=AUTH)
    message = assert_one_sentence(r, 500)
    assert "secret" not in message and "tokenizer" not in message
    errors = [rec for rec in caplog.records if rec.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].exc_info  # no second traceback from uvicorn
    assert httpx.get(f"{in_process}/models", headers=AUTH).status_code == 200  # still up


def test_serve_refuses_a_bad_read_timeout(tiny_models):
    import subprocess

    from serving import SERVE

    p = subprocess.run(
        [*SERVE, "--model", str(Path(tiny_models["INT4"])), "--read-timeout", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and "read timeout" in p.stderr
