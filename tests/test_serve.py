"""`dolly-desktop serve` end to end: a real server process on 127.0.0.1, driven with the
official openai client (and raw httpx where a client would refuse to send the request)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time

import httpx
import openai
import pytest
from serving import INSTRUCTION, SERVE, Reference, make_reference, serve_process, server_log

from dolly_desktop.generation.engine import GenerationResult, StopReason

CAPACITY = 8  # by default 4 requests are decoded together (--max-batch) and 4 wait (--queue)


@pytest.fixture(scope="module")
def server(tiny_models):
    """`serve` on the tiny INT4 model at exact f32, so that its answers equal `reference`'s."""
    with serve_process(tiny_models["INT4"], exact=True) as served:
        yield served


@pytest.fixture(scope="module")
def reference(tiny_models) -> Reference:
    return make_reference(tiny_models["INT4"], exact=True)


def finish_of(result: GenerationResult) -> str:
    return "stop" if result.stop_reason is StopReason.END else "length"


def model_id(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id


@pytest.mark.parametrize(
    ("pieces", "stops", "expected", "stopped"),
    [
        (["\n", "Hello", " wor", "ld ##", "# End", " more"], [], "Hello world", True),
        (["Hi", " <|endo", "ftext|>", " there  "], [], "Hi  there", False),
        (["Hi", "\n\n###", " Instruction:", "x"], [], "Hi", True),
        (["one two", " th", "ree four"], ["three"], "one two ", True),
        (["one\n", "\ntwo"], ["\n\n"], "one", True),
        (["a ## b", " #", "# c"], [], "a ## b ## c", False),
    ],
)
def test_stream_text_pieces_add_up_to_the_clean_text(pieces, stops, expected, stopped):
    from dolly_desktop.generation.prompt import clean_response
    from dolly_desktop.generation.text import StreamText

    st = StreamText(stops)
    shown = "".join(st.feed(p) for p in pieces) + st.finish()
    assert shown == st.text == expected and st.stopped is stopped
    if not stops:
        assert expected == clean_response("".join(pieces))


def test_models_and_unknown_paths(server, client):
    models = client.models.list().data
    assert len(models) == 1 and models[0].id.endswith("-int4")
    assert client.models.retrieve(models[0].id).id == models[0].id
    r = httpx.get(f"{server.url}/nope")
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.get(f"{server.url}/completions")
    assert r.status_code == 405 and "error" in r.json()


@pytest.mark.parametrize("stream", [False, True])
def test_completions_equal_the_engine(client, reference, stream):
    ref = reference(INSTRUCTION, 48)
    args = dict(model=model_id(client), prompt=INSTRUCTION, max_tokens=48, temperature=0)
    if not stream:
        r = client.completions.create(**args)
        text, finish, usage = r.choices[0].text, r.choices[0].finish_reason, r.usage
    else:
        chunks = list(
            client.completions.create(**args, stream=True, stream_options={"include_usage": True})
        )
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        usage = chunks[-1].usage
        assert len(chunks) > 3  # streamed, not sent in one piece
    assert text == ref.text
    assert finish == finish_of(ref)
    assert usage.prompt_tokens == ref.input_tokens
    assert usage.completion_tokens == ref.generated_tokens


@pytest.mark.parametrize("stream", [False, True])
def test_chat_answers_the_last_user_message(client, reference, stream):
    ref = reference(INSTRUCTION, 40)
    messages = [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "Something else entirely"},
        {"role": "assistant", "content": "Arr."},
        {"role": "user", "content": INSTRUCTION},
    ]
    args = dict(model=model_id(client), messages=messages, max_tokens=40, temperature=0)
    if not stream:
        r = client.chat.completions.create(**args)
        assert r.choices[0].message.role == "assistant"
        text, finish = r.choices[0].message.content, r.choices[0].finish_reason
        assert r.usage.completion_tokens == ref.generated_tokens
    else:
        chunks = list(client.chat.completions.create(**args, stream=True))
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        finish = chunks[-1].choices[0].finish_reason
    assert text == ref.text
    assert finish == finish_of(ref)


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_cuts_the_text(client, reference, stream):
    ref = reference(INSTRUCTION, 64)
    stop = ref.text.split()[3]
    expected = ref.text[: ref.text.find(stop)]
    args = dict(
        model=model_id(client), prompt=INSTRUCTION, max_tokens=64, temperature=0, stop=[stop]
    )
    if not stream:
        r = client.completions.create(**args)
        text, finish = r.choices[0].text, r.choices[0].finish_reason
    else:
        chunks = list(client.completions.create(**args, stream=True))
        text = "".join(c.choices[0].text for c in chunks)
        finish = chunks[-1].choices[0].finish_reason
    assert text == expected
    assert finish == "stop"


def test_eight_concurrent_requests_answered_or_refused(server, client, reference, report_figure):
    instructions = [f"Question {i}: what is {w}?" for i, w in enumerate("abcdefgh")]
    refs = {i: reference(i, 300).text for i in instructions}
    assert len(set(refs.values())) == 8  # else a mix-up could go unseen
    results: dict[str, str | Exception] = {}
    start = threading.Barrier(8)

    def ask(instruction: str) -> None:
        c = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)
        start.wait()
        try:
            r = c.completions.create(model="any", prompt=instruction, max_tokens=300, temperature=0)
            results[instruction] = r.choices[0].text
        except openai.APIStatusError as e:
            results[instruction] = e

    threads = [threading.Thread(target=ask, args=(i,)) for i in instructions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 8  # none lost
    answered = {i: r for i, r in results.items() if isinstance(r, str)}
    refused = [r for r in results.values() if not isinstance(r, str)]
    for instruction, text in answered.items():
        assert text == refs[instruction]  # each its own answer
    for e in refused:
        assert isinstance(e, openai.RateLimitError)
        assert e.status_code == 429 and "busy" in e.body["message"]
    assert len(answered) == CAPACITY  # four running and four waiting always fit
    report_figure(
        "serve, 8 concurrent requests", f"{len(answered)} answered, {len(refused)} refused (429)"
    )
    r = client.completions.create(model="any", prompt=INSTRUCTION, max_tokens=8, temperature=0)
    assert r.choices[0].text == reference(INSTRUCTION, 8).text  # still up


def test_full_queue_refuses_at_once_and_a_dropped_waiter_leaves_it(server, client, reference):
    body = {"prompt": "Tell me a long story.", "max_tokens": 1000, "stream": True}
    with contextlib.ExitStack() as stack:
        http = stack.enter_context(httpx.Client(base_url=server.url, timeout=30))

        def status_of_one_more() -> int:
            with http.stream("POST", "/completions", json=body) as s:
                return s.status_code  # the stream closes here: it leaves at once

        streams = [
            stack.enter_context(http.stream("POST", "/completions", json=body))
            for _ in range(CAPACITY)
        ]
        assert all(s.status_code == 200 for s in streams)  # four running, four waiting
        t0 = time.monotonic()
        r = http.post("/completions", json={"prompt": "one more", "max_tokens": 4})
        assert r.status_code == 429 and time.monotonic() - t0 < 2
        assert r.json()["error"]["type"] == "rate_limit_error"
        streams.pop().close()  # a waiting client goes away: its place is free
        deadline = time.monotonic() + 5
        while status_of_one_more() == 429:
            assert time.monotonic() < deadline, "the dropped request kept its place"
            time.sleep(0.05)
    # All went away: the running generation was cancelled, the next request is served.
    t0 = time.monotonic()
    r = client.completions.create(model="any", prompt=INSTRUCTION, max_tokens=8, temperature=0)
    assert r.choices[0].text == reference(INSTRUCTION, 8).text
    assert time.monotonic() - t0 < 10


def test_disconnect_mid_stream_cancels_the_generation(server, client, reference):
    stream = client.completions.create(
        model="any", prompt="Tell me a long story.", max_tokens=1000, temperature=0, stream=True
    )
    chunks = [next(stream) for _ in range(3)]
    stream.close()
    rid = chunks[0].id
    t0 = time.monotonic()
    r = client.completions.create(model="any", prompt=INSTRUCTION, max_tokens=8, temperature=0)
    assert r.choices[0].text == reference(INSTRUCTION, 8).text
    assert time.monotonic() - t0 < 10
    # The server's log says the abandoned generation stopped early.
    line = next(ln for ln in server_log() if rid in ln)
    assert line.endswith("(cancelled)")
    assert int(line.split(f"{rid}: ")[1].split(" tokens")[0]) < 1000


def test_disconnect_while_waiting_for_a_whole_answer_cancels(server, client, reference):
    before = sum(ln.endswith("(cancelled)") for ln in server_log())
    body = {"prompt": "Tell me a long story.", "max_tokens": 1000}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/completions", json=body, timeout=0.1)
    r = client.completions.create(model="any", prompt=INSTRUCTION, max_tokens=8, temperature=0)
    assert r.choices[0].text == reference(INSTRUCTION, 8).text
    assert sum(ln.endswith("(cancelled)") for ln in server_log()) == before + 1


BAD_INPUTS = [
    ("completions", b"{bad json", 400, None),
    ("completions", b"[1, 2]", 400, None),
    ("completions", {}, 400, "prompt"),
    ("completions", {"prompt": 5}, 400, "prompt"),
    ("completions", {"prompt": ["a", "b"]}, 400, "prompt"),
    ("completions", {"prompt": "   "}, 400, "prompt"),
    ("completions", {"prompt": "x" * 20_001}, 400, "prompt"),
    ("completions", {"prompt": "word " * 2100}, 400, "prompt"),  # over 2048 tokens
    ("completions", {"prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
    ("completions", {"prompt": "hi", "max_tokens": 5000}, 400, "max_tokens"),
    ("completions", {"prompt": "hi", "max_tokens": "ten"}, 400, "max_tokens"),
    ("completions", {"prompt": "hi", "max_tokens": 1.5}, 400, "max_tokens"),
    ("completions", {"prompt": "hi", "temperature": 9}, 400, "temperature"),
    ("completions", {"prompt": "hi", "temperature": "hot"}, 400, "temperature"),
    ("completions", {"prompt": "hi", "temperature": True}, 400, "temperature"),
    ("completions", {"prompt": "hi", "top_p": 0}, 400, "top_p"),
    ("completions", {"prompt": "hi", "top_k": 99}, 400, "top_k"),
    ("completions", {"prompt": "hi", "repetition_penalty": 3}, 400, "repetition_penalty"),
    ("completions", {"prompt": "hi", "seed": -1}, 400, "seed"),
    ("completions", {"prompt": "hi", "stop": 5}, 400, "stop"),
    ("completions", {"prompt": "hi", "stop": ["a", 1]}, 400, "stop"),
    ("completions", {"prompt": "hi", "stop": list("abcde")}, 400, "stop"),
    ("completions", {"prompt": "hi", "stream": "yes"}, 400, "stream"),
    ("completions", {"prompt": "hi", "n": 2}, 400, "n"),
    ("completions", {"prompt": "hi", "model": 5}, 400, "model"),
    ("completions", b'{"prompt": "' + b"x" * (1 << 20) + b'"}', 413, None),
    ("chat/completions", {}, 400, "messages"),
    ("chat/completions", {"messages": "hi"}, 400, "messages"),
    ("chat/completions", {"messages": [{"content": "hi"}]}, 400, "messages"),
    ("chat/completions", {"messages": [{"role": "system", "content": "hi"}]}, 400, "messages"),
    ("chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400, "messages"),
    ("chat/completions", {"messages": [{"role": "user", "content": ""}]}, 400, "messages"),
    (
        "chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 0},
        400,
        "max_completion_tokens",
    ),
    (
        "chat/completions",
        {"messages": [{"role": "user", "content": "word " * 2100}], "stream": True},
        400,
        "messages",
    ),
]


def test_bad_input_gets_a_json_error_naming_the_field(server, client, reference):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for path, body, status, param in BAD_INPUTS:
            if isinstance(body, bytes):
                r = http.post(path, content=body, headers={"Content-Type": "application/json"})
            else:
                r = http.post(path, json=body)
            assert r.status_code == status, (path, str(body)[:80], r.text)
            error = r.json()["error"]
            assert error["param"] == param, (path, str(body)[:80], error)
            assert error["type"] == "invalid_request_error" and error["message"].endswith(".")
    with pytest.raises(openai.BadRequestError, match=r"temperature must be from 0\.1 to 5"):
        client.completions.create(model="any", prompt="hi", temperature=9)
    r = client.completions.create(model="any", prompt=INSTRUCTION, max_tokens=8, temperature=0)
    assert r.choices[0].text == reference(INSTRUCTION, 8).text  # still up


def test_listens_on_loopback_only(server):
    import psutil

    listening = [
        c.laddr
        for c in psutil.Process(server.proc.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening)


def test_api_key(tiny_models, reference):
    with serve_process(tiny_models["INT4"], "--api-key", "s3cret", exact=True) as served:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = httpx.post(
                f"{served.url}/completions", json={"prompt": "hi"}, headers=headers, timeout=30
            )
            assert r.status_code == 401
            assert r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{served.url}/models").status_code == 401
        bad = openai.OpenAI(base_url=served.url, api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        good = openai.OpenAI(base_url=served.url, api_key="s3cret", max_retries=0)
        r = good.completions.create(model="any", prompt=INSTRUCTION, max_tokens=8, temperature=0)
        assert r.choices[0].text == reference(INSTRUCTION, 8).text


def test_busy_port_fails_at_once_with_one_line(tiny_models):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = subprocess.run(
            [*SERVE, "--model", str(tiny_models["INT4"]), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "DOLLY_DESKTOP_API_KEY": ""},
        )
    assert p.returncode == 2
    assert f"Cannot listen on 127.0.0.1 port {port}" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
