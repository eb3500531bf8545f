"""Continuous batching (generation/engines/batching.py): several requests decoded together, each
answered exactly as alone; then the same through `dolly-desktop serve`."""

from __future__ import annotations

import concurrent.futures
import os
import random
import re
import signal
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import openai
import psutil
import pytest
from conftest import EXACT
from serving import Served, json_schema_format, make_reference, post_json, serve_process, server_log

from dolly_desktop.errors import DollyError
from dolly_desktop.generation.engine import GenerationResult, StopReason
from dolly_desktop.generation.params import GenerationParams

INSTRUCTIONS = [f"Question {i}: what is {w}?" for i, w in enumerate("abcd")]


@pytest.fixture(scope="module")
def batch(tiny_fp16) -> Iterator:
    from dolly_desktop.generation.engines.batching import BatchingEngine

    engine = BatchingEngine(tiny_fp16, "CPU", max_batch=4, properties=EXACT)
    yield engine
    engine.close()


class Timed:
    """A generation's text callback that dates its first and last pieces."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.last: float | None = None

    def __call__(self, piece: str) -> None:
        now = time.monotonic()
        self.first = self.first or now
        self.last = now


def run_together(batch, jobs: list[tuple]) -> list[GenerationResult]:
    """Each job (generate's arguments) on its own thread, all started at once; results in
    order."""
    results: list[GenerationResult | None] = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def one(i: int) -> None:
        start.wait()
        results[i] = batch.generate(*jobs[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


def test_four_greedy_answers_decoded_together_equal_each_alone(batch, engine):
    params = GenerationParams(greedy=True, max_new_tokens=120)
    alone = [engine.generate(i, params) for i in INSTRUCTIONS]  # the one-stream engine
    assert len({r.text for r in alone}) == 4  # else a mix-up could go unseen
    clocks = [Timed() for _ in INSTRUCTIONS]
    together = run_together(
        batch, [(i, params, c) for i, c in zip(INSTRUCTIONS, clocks, strict=True)]
    )
    for a, b in zip(alone, together, strict=True):
        assert b.token_ids == a.token_ids and b.text == a.text
        assert b.stop_reason == a.stop_reason and b.input_tokens == a.input_tokens
    # Decoded together: every stream had its first piece before any had its last.
    assert max(c.first for c in clocks) < min(c.last for c in clocks)


def test_a_stop_token_ends_only_its_own_request(batch, engine):
    params = GenerationParams(greedy=True, max_new_tokens=80)
    refs = [engine.generate(i, params) for i in INSTRUCTIONS]
    stop = refs[1].token_ids[10]  # said by the second answer, at the latest as its 11th token
    alone = engine.generate(INSTRUCTIONS[1], params, stop_token_ids={stop})
    assert alone.stop_reason is StopReason.END and alone.generated_tokens <= 10
    jobs = [(i, params, None, {stop} if n == 1 else None) for n, i in enumerate(INSTRUCTIONS)]
    together = run_together(batch, jobs)
    assert together[1].token_ids == alone.token_ids
    assert together[1].stop_reason is StopReason.END
    for n in (0, 2, 3):
        assert together[n].token_ids == refs[n].token_ids


def test_seeded_sampling_is_the_same_batched_or_alone(batch, engine):
    jobs = [
        (i, GenerationParams(max_new_tokens=60, seed=7 + n)) for n, i in enumerate(INSTRUCTIONS)
    ]
    alone = [engine.generate(i, p) for i, p in jobs]
    together = run_together(batch, jobs)
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]


def test_cancel_drops_only_its_own_request(batch, engine):
    params = GenerationParams(greedy=True, max_new_tokens=200)
    sessions = [batch.session() for _ in range(3)]
    results: list[GenerationResult | None] = [None] * 3
    pieces = [0, 0, 0]

    def one(n: int) -> None:
        def on_text(piece: str) -> None:
            pieces[n] += 1
            if n == 1 and pieces[n] == 5:
                sessions[1].cancel()  # as the server does when its client goes

        results[n] = sessions[n].generate(INSTRUCTIONS[n], params, on_text)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    cancelled = results[1]
    assert cancelled.stop_reason is StopReason.CANCELLED and cancelled.generated_tokens < 20
    for n in (0, 2):
        alone = engine.generate(INSTRUCTIONS[n], params)
        assert results[n].token_ids == alone.token_ids
        assert results[n].stop_reason is alone.stop_reason


def test_a_crash_of_the_model_process_fails_its_requests_and_the_next_is_answered(batch):
    """The pipeline runs in a child process (a native crash there, as xgrammar's SIGSEGV on a
    deep grammar once killed serve, takes only the requests it held); the next request starts
    a new child and gets the same answer as before."""
    plain = GenerationParams(greedy=True, max_new_tokens=8)
    before = batch.generate(INSTRUCTIONS[0], plain).text
    long = GenerationParams(greedy=True, max_new_tokens=400)
    first = batch.stepper
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(batch.generate, "Story 1", long)
        while batch.progress()[0] == 0 and not running.done():
            time.sleep(0.01)
        os.kill(first._proc.pid, signal.SIGSEGV)
        with pytest.raises(DollyError, match=r"model process stopped \(signal 11\)"):
            running.result()
    assert batch.generate(INSTRUCTIONS[0], plain).text == before
    assert batch.stepper is not first and first._proc.returncode == -signal.SIGSEGV


def test_the_kv_cache_default_is_what_the_batch_can_use_and_no_more(tiny_fp16, tmp_path):
    import json

    import openvino_genai as ov_genai

    from dolly_desktop.generation.engines.batching import GIB, plan_kv_cache
    from dolly_desktop.models.folder import ModelDir, inspect_model_dir

    tiny = inspect_model_dir(tiny_fp16)
    small = plan_kv_cache(tiny, 4, {}, free_bytes=64 * GIB)
    # Blocks of 32 tokens on the CPU: 4 contexts of 2048 tokens, not a whole GB (issue 23, 5).
    assert (small.blocks, small.cache_gb, small.tokens) == (256, 0, 4 * tiny.context_length)
    assert small.bytes == 4 * tiny.context_length * small.bytes_per_token
    assert "4 full contexts" in small.reason and "KV cache 8.4 MB" in small.line()
    scheduler = ov_genai.SchedulerConfig()
    small.apply(scheduler)
    assert (scheduler.num_kv_blocks, scheduler.cache_size) == (256, 0)
    # The export leaves an f16 KV cache in the IR, which OpenVINO applies: f32 is twice that.
    assert plan_kv_cache(tiny, 4, EXACT, free_bytes=64 * GIB).bytes_per_token == (
        small.bytes_per_token * 2
    )
    assert plan_kv_cache(tiny, 4, {}, free_bytes=64 * GIB, device="GPU.0").blocks == 4 * 128
    (tmp_path / "config.json").write_text(
        json.dumps({"num_hidden_layers": 32, "hidden_size": 2560})
    )
    b3 = ModelDir(path=tmp_path, context_length=2048, has_ov_tokenizer=True, weights_bytes=0)
    # dolly-v2-3b at u8: 200 KiB a token; 8 contexts of 2048 tokens = 3.4 GB.
    plan = plan_kv_cache(b3, 8, {}, free_bytes=64 * GIB)
    assert plan.tokens == 8 * 2048 and "8 full contexts" in plan.reason
    tight = plan_kv_cache(b3, 8, {}, free_bytes=6 * GIB)  # a quarter of free memory at most
    assert tight.bytes <= 1.5 * GIB < tight.bytes + 32 * tight.bytes_per_token
    assert "quarter" in tight.reason
    floor = plan_kv_cache(b3, 8, {}, free_bytes=GIB)  # never less than one full context
    assert floor.tokens == 2048 and "one full context" in floor.reason
    asked = plan_kv_cache(b3, 4, {}, cache_gb=5)
    assert (asked.cache_gb, asked.blocks) == (5, 0) and asked.line().startswith("KV cache 5 GB")
    asked.apply(scheduler := ov_genai.SchedulerConfig())
    assert (scheduler.num_kv_blocks, scheduler.cache_size) == (0, 5)
    with pytest.raises(Exception, match="at least 1 GB"):
        plan_kv_cache(b3, 4, {}, cache_gb=0)


# --- through `dolly-desktop serve`


@pytest.fixture(scope="module")
def reference(tiny_models):
    return make_reference(tiny_models["INT4"], exact=True)


@pytest.fixture(scope="module")
def batching_server(tiny_models) -> Iterator[Served]:
    with serve_process(tiny_models["INT4"], exact=True) as served:  # batching: the default
        yield served


@dataclass
class Stream:
    """One streamed completion as a client saw it."""

    rid: str = ""
    text: str = ""
    first: float | None = None
    last: float | None = None
    finish: str | None = None


def stream_all(url: str, instructions: list[str], max_tokens: int, close_after=None):
    """Stream each instruction from its own client thread, all at once; the client of
    `close_after[0]` goes away after close_after[1] chunks."""
    streams = [Stream() for _ in instructions]
    start = threading.Barrier(len(instructions))

    def one(n: int) -> None:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)
        start.wait()
        it = client.completions.create(
            model="any", prompt=instructions[n], max_tokens=max_tokens, temperature=0, stream=True
        )
        s = streams[n]
        for count, chunk in enumerate(it, 1):
            now = time.monotonic()
            s.rid = chunk.id
            s.first = s.first or now
            s.last = now
            s.text += chunk.choices[0].text
            s.finish = chunk.choices[0].finish_reason or s.finish
            if close_after and close_after[0] == n and count == close_after[1]:
                it.close()
                return

    threads = [threading.Thread(target=one, args=(n,)) for n in range(len(instructions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return streams


def test_four_streams_are_decoded_together(batching_server, reference):
    streams = stream_all(batching_server.url, INSTRUCTIONS, 150)
    for s, instruction in zip(streams, INSTRUCTIONS, strict=True):
        ref = reference(instruction, 150)
        assert s.text == ref.text
        assert s.finish == ("stop" if ref.stop_reason is StopReason.END else "length")
    # Every stream had its first token before any stream ended.
    assert max(s.first for s in streams) < min(s.last for s in streams)


def test_a_client_that_goes_away_cancels_only_its_own_request(batching_server, reference):
    # 1000 tokens: the abandoned answer must still be running when its client goes.
    streams = stream_all(batching_server.url, INSTRUCTIONS[:3], 1000, close_after=(1, 3))
    for n in (0, 2):
        assert streams[n].text == reference(INSTRUCTIONS[n], 1000).text
    gone = streams[1].rid
    deadline = time.monotonic() + 10
    while not any(gone in ln for ln in server_log()):
        assert time.monotonic() < deadline, "the abandoned request was never logged"
        time.sleep(0.1)
    line = next(ln for ln in server_log() if gone in ln)
    assert line.endswith("(cancelled)")
    assert int(line.split(f"{gone}: ")[1].split(" tokens")[0]) < 1000


def test_one_at_a_time_without_batching(tiny_models, reference):
    with serve_process(tiny_models["INT4"], "--batching", "off", exact=True) as served:
        assert "one request at a time" in served.stderr()
        streams = stream_all(served.url, INSTRUCTIONS[:2], 150)
    for s, instruction in zip(streams, INSTRUCTIONS, strict=False):
        assert s.text == reference(instruction, 150).text
    first, second = sorted(streams, key=lambda s: s.first)
    assert second.first > first.last  # the second waited for the first


def test_serve_prints_the_batch_and_the_kv_cache(batching_server):
    line = batching_server.stderr()
    assert "up to 4 requests at once" in line
    # This server runs at exact f32 (an f32 KV cache): twice the export's f16, 8.4 MB.
    assert "KV cache 16.8 MB: 8192 tokens of context in all" in line


def test_chat_max_completion_tokens_outranks_max_tokens(batching_server, reference):
    client = openai.OpenAI(base_url=batching_server.url, api_key="-", max_retries=0)
    r = client.chat.completions.create(
        model="any",
        messages=[{"role": "user", "content": INSTRUCTIONS[0]}],
        temperature=0,
        max_tokens=50,
        max_completion_tokens=5,
    )
    assert r.usage.completion_tokens == reference(INSTRUCTIONS[0], 5).generated_tokens <= 5


# Serve memory across prompt lengths (issue 23, item 5): the audit saw +204 MB after 200 new
# lengths and +165 MB after 200 more, from genai touching a 1 GB KV cache block by block.
MEMORY_LENGTHS = 400
MEMORY_WARMUP = 20
MEMORY_SLACK = 60_000_000


def test_models_answers_while_genai_compiles_a_grammar(batching_server):
    """genai compiles a structured-output grammar inside step(), whose binding holds the GIL:
    in-process, /v1/models waited 0.1-0.4 s for it (issue 23). The pipeline runs in a child
    process, so the server's event loop answers meanwhile (the bound the issue set)."""
    proc = psutil.Process(batching_server.proc.pid)
    assert any("engines.batching" in " ".join(c.cmdline()) for c in proc.children())
    props = {f"p{i}": {"type": "string", "maxLength": 30} for i in range(12)}
    worst: list[float] = []  # the longest /v1/models of each schema request
    with httpx.Client(timeout=30) as c, concurrent.futures.ThreadPoolExecutor(1) as pool:
        c.get(f"{batching_server.url}/models")  # the connection is open before timing starts
        for n in range(6):  # a new grammar each time (maxLength differs)
            props["p0"]["maxLength"] = 20 + n
            schema = {"type": "object", "properties": props, "required": list(props)}
            body = {"prompt": "JSON", "max_tokens": 300, "temperature": 0,
                    "response_format": json_schema_format(schema)}  # fmt: skip
            answer = pool.submit(post_json, f"{batching_server.url}/completions", body)
            worst.append(0.0)
            while not answer.done():
                t0 = time.perf_counter()
                assert c.get(f"{batching_server.url}/models").status_code == 200
                worst[-1] = max(worst[-1], time.perf_counter() - t0)
            assert answer.result().status_code == 200, answer.result().text
    # In-process every request stalls /v1/models for its compile; the median of the six keeps
    # one scheduling hiccup of a busy machine from deciding.
    ms = sorted(round(w * 1000) for w in worst)
    assert statistics.median(worst) < 0.1, f"/v1/models took up to {ms} ms"


def test_serve_memory_levels_off_across_new_prompt_lengths(tiny_models, report_figure):
    from dolly_desktop.generation.engines.batching import kv_bytes_per_token
    from dolly_desktop.models.folder import inspect_model_dir

    info = inspect_model_dir(tiny_models["INT4"])
    # What 4 full contexts (--max-batch's default) need, at the IR's f16 KV cache.
    need = 4 * info.context_length * kv_bytes_per_token(info, {})
    lengths = list(range(1, 1601))  # words; the longest prompt fits the context with 4 tokens
    random.Random(23).shuffle(lengths)
    with serve_process(tiny_models["INT4"]) as served, httpx.Client(timeout=60) as http:
        size = re.search(r"KV cache ([\d.]+) (MB|GB)", served.stderr())
        assert size, served.stderr()
        kv = float(size[1]) * (1e6 if size[2] == "MB" else 1e9)
        assert kv <= need * 1.01, f"the KV cache is {size[0]}, 4 contexts need {need / 1e6:.1f} MB"
        proc = psutil.Process(served.proc.pid)
        rss = []
        for i, n in enumerate(lengths[:MEMORY_LENGTHS], 1):
            r = http.post(
                f"{served.url}/completions",
                json={"model": "any", "prompt": "word " * n, "max_tokens": 4, "temperature": 0},
            )
            assert r.status_code == 200, r.text
            if i in (MEMORY_WARMUP, MEMORY_LENGTHS // 2, MEMORY_LENGTHS):
                # serve and its model process (the pipeline runs in a child)
                family = [proc, *proc.children(recursive=True)]
                rss.append(sum(p.memory_info().rss for p in family))
    level, half, end = rss
    figures = f"{level / 1e6:.0f} MB after {MEMORY_WARMUP}, then {(half - level) / 1e6:+.0f} / "
    figures += f"{(end - level) / 1e6:+.0f} MB after {MEMORY_LENGTHS // 2} / {MEMORY_LENGTHS}"
    report_figure("serve RSS across new prompt lengths (batching, tiny)", figures)
    assert end - level <= need + MEMORY_SLACK, figures
