"""RemoteEngine against a real `dolly-desktop serve` process: same answers as the local
engine, cancel, a wrong key, servers that are down, stuck or killed mid-answer; and
`dolly-desktop generate --remote`."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from serving import (
    INSTRUCTION,
    Reference,
    Served,
    free_port,
    make_reference,
    serve_process,
)

from dolly_desktop.errors import DollyError
from dolly_desktop.generation.engine import StopReason
from dolly_desktop.generation.engines.local import Engine
from dolly_desktop.generation.engines.remote import RemoteEngine
from dolly_desktop.generation.params import GenerationParams
from dolly_desktop.history.store import History

KEY = "remote-test-key"


@pytest.fixture(scope="module")
def server(tiny_models) -> Iterator[Served]:
    with serve_process(tiny_models["INT4"], "--api-key", KEY) as served:
        yield served


@pytest.fixture(scope="module")
def reference(tiny_models) -> Reference:
    return make_reference(tiny_models["INT4"])


@pytest.fixture
def remote(server) -> Iterator[RemoteEngine]:
    engine = RemoteEngine(server.url, api_key=KEY, timeout=30)
    yield engine
    engine.close()


def test_answers_equal_the_local_engine(remote, server, reference: Reference):
    assert remote.model.folder == server.url and remote.device == "remote"
    assert remote.context_length == 2048 and remote.load_s > 0
    ref = reference(INSTRUCTION, 48)
    pieces: list[str] = []
    result = remote.generate(
        INSTRUCTION, GenerationParams(greedy=True, max_new_tokens=48), pieces.append
    )
    assert result.text == ref.text
    assert "".join(pieces) == result.text and len(pieces) > 3
    assert result.stop_reason is ref.stop_reason
    assert result.input_tokens == ref.input_tokens
    assert result.generated_tokens == ref.generated_tokens
    assert set(result.token_ids) == {-1}  # counts are known, ids are not
    assert 0 < result.ttft_s <= result.total_s
    assert remote.progress() == (0, 0.0)  # nothing running


def test_sampling_parameters_reach_the_server(remote, tiny_models):
    params = GenerationParams(
        max_new_tokens=24, temperature=0.9, top_p=0.8, top_k=20, repetition_penalty=1.2, seed=7
    )
    local = Engine(tiny_models["INT4"]).generate(INSTRUCTION, params)
    assert remote.generate(INSTRUCTION, params).text == local.text


def test_cancel_from_another_thread_stops_at_once(remote, reference: Reference):
    first_piece = threading.Event()
    outcome: dict[str, object] = {}

    def run() -> None:
        params = GenerationParams(greedy=True, max_new_tokens=1000)
        outcome["result"] = remote.generate(
            "Tell me a long story.", params, lambda _: first_piece.set()
        )

    worker = threading.Thread(target=run)  # as the GUI's worker thread: no event loop
    worker.start()
    assert first_piece.wait(30)
    assert remote.progress()[0] > 0
    remote.cancel()
    worker.join(10)
    assert not worker.is_alive()
    result = outcome["result"]
    assert result.stop_reason is StopReason.CANCELLED and result.generated_tokens < 1000
    again = remote.generate(INSTRUCTION, GenerationParams(greedy=True, max_new_tokens=8))
    assert again.text == reference(INSTRUCTION, 8).text


def test_one_generation_at_a_time(remote):
    started = threading.Event()
    worker = threading.Thread(
        target=remote.generate,
        args=("Tell me a long story.", GenerationParams(greedy=True, max_new_tokens=1000)),
        kwargs={"on_text": lambda _: started.set()},
    )
    worker.start()
    assert started.wait(30)
    with pytest.raises(DollyError, match="already being generated"):
        remote.generate(INSTRUCTION)
    remote.cancel()
    worker.join(10)


def test_wrong_or_missing_key_is_one_clear_sentence(server):
    with pytest.raises(DollyError, match="refused the API key"):
        RemoteEngine(server.url, api_key="wrong")
    with pytest.raises(DollyError, match="refused the API key"):
        RemoteEngine.test(server.url)


def test_test_button(server):
    message = RemoteEngine.test(server.url + "/", api_key=KEY)
    assert message.startswith(f"{server.url} answered in") and "-int4" in message
    with pytest.raises(DollyError, match="should end in /v1"):
        RemoteEngine.test(server.url.removesuffix("/v1") + "/v2", api_key=KEY)
    with pytest.raises(DollyError, match="not a server address"):
        RemoteEngine.test("localhost:8000")


def test_server_down_or_stuck_fails_fast_with_one_sentence():
    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(DollyError, match=r"Cannot connect to the server .* is it running"):
        RemoteEngine(f"http://127.0.0.1:{port}/v1")
    assert time.monotonic() - t0 < 5
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        t0 = time.monotonic()
        with pytest.raises(DollyError, match="sent nothing for 1 s"):
            RemoteEngine.test(url, timeout=1)
        assert time.monotonic() - t0 < 5


def test_server_killed_mid_generation(tiny_models):
    with serve_process(tiny_models["INT4"]) as served:
        remote = RemoteEngine(served.url, timeout=30)
        kill_once = threading.Event()

        def on_text(_: str) -> None:
            if not kill_once.is_set():
                kill_once.set()
                served.proc.kill()
                served.proc.wait()

        t0 = time.monotonic()
        with pytest.raises(DollyError, match="broke in the middle of the response"):
            remote.generate(
                "Tell me a long story.", GenerationParams(greedy=True, max_new_tokens=1000), on_text
            )
        assert time.monotonic() - t0 < 10
        with pytest.raises(DollyError, match="Cannot connect"):
            remote.generate(INSTRUCTION)
        remote.close()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dolly_desktop.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_generate_remote_and_history(server, reference: Reference):
    p = run_cli(
        "generate",
        "--remote",
        server.url,
        "--api-key",
        KEY,
        "--greedy",
        "--max-new-tokens",
        "12",
        INSTRUCTION,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == reference(INSTRUCTION, 12).text
    assert "12 tokens" in p.stderr and "stopped: length" in p.stderr
    (entry,) = History().list(limit=1)
    assert entry.instruction == INSTRUCTION and entry.response == p.stdout.strip()
    assert entry.model.precision == "remote" and entry.model.name.endswith("-int4")
    assert entry.model.folder == server.url and entry.device == "remote"
    assert entry.stop_reason == "length" and entry.generated_tokens == 12


def test_cli_generate_needs_exactly_one_of_model_and_remote(server, tiny_models):
    both = run_cli("generate", "--model", str(tiny_models["INT4"]), "--remote", server.url, "hi")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    neither = run_cli("generate", "hi")
    assert neither.returncode == 2 and "one of the arguments --model --remote" in neither.stderr
    down = run_cli("generate", "--remote", f"http://127.0.0.1:{free_port()}/v1", "hi")
    assert down.returncode == 2 and "Cannot connect" in down.stderr


class FakeOVMS:
    """An OVMS-shaped stand-in: /v3 prefix, no max_model_len, no usage, special tokens in the
    text (as RemoteEngine asks), and the model running on past `### End`."""

    def __init__(self, pieces: list[str], stall_after: int | None = None) -> None:
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse, StreamingResponse
        from starlette.routing import Route

        self.requests: list[dict] = []
        self.closed_early = threading.Event()

        async def models(request):
            return JSONResponse({"object": "list", "data": [{"id": "dolly-v2-12b"}]})

        async def completions(request):
            self.requests.append(await request.json())

            async def events():
                import asyncio
                import json

                try:
                    for i, piece in enumerate(pieces):
                        if i == stall_after:
                            await asyncio.sleep(30)
                        chunk = {"choices": [{"index": 0, "text": piece, "finish_reason": None}]}
                        yield f"data: {json.dumps(chunk)}\n\n"
                        await asyncio.sleep(0.01)
                    await asyncio.sleep(30)  # a model that would run on to max_tokens
                except asyncio.CancelledError:
                    self.closed_early.set()
                    raise

            return StreamingResponse(events(), media_type="text/event-stream")

        import uvicorn

        app = Starlette(
            routes=[
                Route("/v3/models", models),
                Route("/v3/completions", completions, methods=["POST"]),
            ]
        )
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/v3"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> FakeOVMS:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def test_ovms_shaped_server_ends_at_the_end_key():
    pieces = ["\n", "Hello", " wor", "ld ##", "# End", "\n### Instruction:", "more"]
    with FakeOVMS(pieces) as ovms:
        remote = RemoteEngine(ovms.url, timeout=10)
        assert remote.model.name == "dolly-v2-12b" and remote.context_length == 2048
        shown: list[str] = []
        params = GenerationParams(max_new_tokens=100, temperature=0.5, top_k=0, seed=3)
        t0 = time.monotonic()
        result = remote.generate(INSTRUCTION, params, shown.append)
        assert time.monotonic() - t0 < 5  # did not wait for the model to run on
        assert result.text == "".join(shown) == "Hello world"
        assert result.stop_reason is StopReason.END
        assert ovms.closed_early.wait(5)  # the connection was closed: OVMS stops generating
        (sent,) = ovms.requests
        assert sent["model"] == "dolly-v2-12b" and sent["stream"] is True
        assert sent["prompt"].endswith(f"{INSTRUCTION}\n\n### Response:\n")
        assert sent["skip_special_tokens"] is False and sent["top_k"] == -1
        assert (sent["temperature"], sent["seed"], sent["max_tokens"]) == (0.5, 3, 100)
        remote.close()


def test_server_stalling_mid_answer_times_out_with_one_sentence():
    with FakeOVMS(["Hello", " there", " friend"], stall_after=1) as ovms:
        remote = RemoteEngine(ovms.url, timeout=1)
        t0 = time.monotonic()
        with pytest.raises(DollyError, match="sent nothing for 1 s"):
            remote.generate(INSTRUCTION)
        assert time.monotonic() - t0 < 5
        remote.close()


LONG = "Write a long story about a sheep."
FAILOVER_TOKENS = 600  # still generating on the first server when it is killed


def test_failover_continues_the_answer_one_server_gives(tiny_fp16, engine):
    """Two real `serve` processes at exact f32; the first is killed in the middle of an answer.
    The answer goes on on the second from where it stopped, and the person is told once. The
    answer is the one a single server gives, character for character: a continuation wrapped
    in Dolly's template again, or an answer started over, is not."""
    said: list[str] = []
    params = GenerationParams(greedy=True, max_new_tokens=FAILOVER_TOKENS)
    with (
        serve_process(tiny_fp16, exact=True) as one,
        serve_process(tiny_fp16, exact=True) as two,
    ):
        alone = RemoteEngine(two.url, timeout=30)
        single = alone.generate(LONG, params)
        alone.close()
        down = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
        remote = RemoteEngine(f"{down}, {one.url}, {two.url}", timeout=30, notify=said.append)
        assert remote.base == one.url and len(said) == 1 and "Cannot connect" in said[0]
        pieces: list[str] = []

        def on_text(piece: str) -> None:
            pieces.append(piece)
            if len(pieces) == 5:
                one.proc.kill()  # mid-answer

        result = remote.generate(LONG, params, on_text)
        remote.close()
    assert remote.base == two.url
    assert len(said) == 2 and "broke in the middle" in said[1]
    assert "Continuing on the next server" in said[1]
    # The one-server answer is the exact engine's: a test of the continuation, not of rounding.
    assert single.text == engine.generate(LONG, params).text
    assert single.generated_tokens > 100  # long enough to be cut in the middle
    assert result.text == single.text
    assert "".join(pieces) == result.text and len(pieces) > 5  # nothing shown twice
    assert result.stop_reason is single.stop_reason
    assert result.generated_tokens == single.generated_tokens
    assert result.input_tokens == single.input_tokens
    assert result.extra["server"] == two.url
