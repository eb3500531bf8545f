"""Where decode and prefill time goes, for docs/benchmarks.md's "What the hardware allows".

1. openvino-genai against a bare OpenVINO infer loop (greedy argmax in Python) on the same
   model in one process, alternated: does anything above the kernels cost decode speed?
2. The prefix cache of genai's paged-attention pipeline against the stateful one: TTFT of
   Dolly prompts that share the template's fixed first tokens, after priming with them.
3. The app's own template reuse (Engine(reuse_template=True), the window's) against whole
   prefills, by prompt length, with a reading pause and back to back.

    .venv/bin/python -m bench.kernel_bound [--shape 3b] [--precision INT4] [--runs 4]
    .venv/bin/python -m bench.kernel_bound --child prefix|stateful ...   (one side, internal)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.engine_vs_notebook import LONG, SHORT

INSTRUCTIONS = ["What is the capital of France?", SHORT, "Name three primary colours."]


def _stream_times(pipe, ids, n: int) -> list[float]:
    import openvino_genai as ov_genai

    cfg = pipe.get_generation_config()
    cfg.max_new_tokens, cfg.ignore_eos, cfg.do_sample = n, True, False
    times: list[float] = []

    def on_token(_: int) -> ov_genai.StreamingStatus:
        times.append(time.perf_counter())
        return ov_genai.StreamingStatus.RUNNING

    pipe.generate(ids, cfg, on_token)
    return times


def genai_vs_raw(model: Path, cache: str, runs: int, tokens: int) -> tuple[list, list]:
    import openvino as ov
    import openvino_genai as ov_genai

    from dolly_desktop.generation.engines.local import cpu_defaults
    from dolly_desktop.generation.prompt import build_prompt

    pipe = ov_genai.LLMPipeline(str(model), "CPU", **cpu_defaults(model), CACHE_DIR=cache)
    compiled = ov.Core().compile_model(
        str(model / "openvino_model.xml"), "CPU", {"CACHE_DIR": cache}
    )
    req = compiled.create_infer_request()
    encoded = pipe.get_tokenizer().encode(build_prompt(SHORT))
    ids = encoded.input_ids.data.astype(np.int64)

    def step(tokens: np.ndarray, start: int) -> int:
        n = tokens.shape[1]
        out = req.infer({
            "input_ids": tokens,
            "attention_mask": np.ones((1, start + n), np.int64),
            "position_ids": np.arange(start, start + n, dtype=np.int64)[None],
            "beam_idx": np.zeros((1,), np.int32),
        })  # fmt: skip
        return int(out[0][0, -1].argmax())

    def raw(n: int) -> float:
        req.reset_state()
        nxt, pos = step(ids, 0), ids.shape[1]
        t0 = time.perf_counter()
        for i in range(n - 1):
            nxt = step(np.array([[nxt]], np.int64), pos + i)
        return (n - 1) / (time.perf_counter() - t0)

    def genai(n: int) -> float:
        times = _stream_times(pipe, encoded, n)
        return (len(times) - 1) / (times[-1] - times[0])

    raw(4), genai(4)  # the weight repack of both compiled models
    r, g = [], []
    for _ in range(runs):
        r.append(raw(tokens))
        g.append(genai(tokens))
    return r, g


def child_ttft(kind: str, model: str, cache: str) -> dict:
    import openvino_genai as ov_genai

    from dolly_desktop.generation.prompt import PROMPT_FORMAT, build_prompt

    props: dict = {"CACHE_DIR": cache}
    if kind == "prefix":
        sched = ov_genai.SchedulerConfig()
        sched.enable_prefix_caching = True
        props |= {"ATTENTION_BACKEND": "PA", "scheduler_config": sched}
    else:
        props["ATTENTION_BACKEND"] = "SDPA"
    pipe = ov_genai.LLMPipeline(model, "CPU", **props)
    tok = pipe.get_tokenizer()
    template_head = PROMPT_FORMAT.split("{instruction}")[0]
    _stream_times(pipe, tok.encode(template_head), 1)  # warm-up, priming the template's KV
    out = {"template_tokens": int(tok.encode(template_head).input_ids.shape[1])}
    for i, text in enumerate(INSTRUCTIONS):
        t0 = time.perf_counter()
        out[f"ttft_{i + 1}"] = _stream_times(pipe, tok.encode(build_prompt(text)), 2)[0] - t0
    for i in (1, 2):
        t0 = time.perf_counter()
        out[f"ttft_long_{i}"] = _stream_times(pipe, tok.encode(build_prompt(LONG)), 2)[0] - t0
    return out


def template_reuse(model: Path, cache: str) -> None:
    from dolly_desktop.generation.engines.local import Engine
    from dolly_desktop.generation.params import GenerationParams

    params = GenerationParams(greedy=True, max_new_tokens=8)
    words = ("the quick brown fox jumps over a lazy dog while it rains in spain " * 8).split(" ")
    cases = [("Who is Dolly?", 1.0, "a second after the last answer")]
    cases.append(("Who is Dolly?", 0.0, "right after the last answer"))
    for n in (20, 40, 64, 100):
        cases.append((" ".join(words[:n]), 1.0, "after a second"))
    cases.append((LONG, 1.0, "after a second"))
    engines = {r: Engine(model, cache_dir=Path(cache), reuse_template=r) for r in (False, True)}
    print("| prompt tokens | when | whole prefill (s) | head cached (s) | ratio |")
    print("|---|---|---|---|---|")
    for text, pause, when in cases:
        ttft = {}
        for reuse, engine in engines.items():
            engine.generate("Name three primary colours.", params)  # the answer before
            time.sleep(pause)
            r = engine.generate(text, params)
            ttft[reuse] = r.ttft_s
        print(f"| {r.input_tokens} | {when} | {ttft[False]:.3f} | {ttft[True]:.3f} | "
              f"{ttft[True] / ttft[False]:.2f} |")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="3b")
    ap.add_argument("--precision", default="INT4")
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--child")
    ap.add_argument("--model")
    ap.add_argument("--cache")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child_ttft(a.child, a.model, a.cache)))
        return

    from bench.models import ir, machine

    model = ir(a.shape, a.precision)
    print(f"machine: {machine()}\nmodel: {a.shape} {a.precision}\n")
    with tempfile.TemporaryDirectory() as cache:
        r, g = genai_vs_raw(model, cache, a.runs, a.tokens)
    fmt = lambda xs: " ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    print(f"decode tok/s, {a.tokens} greedy tokens, alternated in one process:")
    print(f"  bare OpenVINO loop {fmt(r)}\n  openvino-genai     {fmt(g)}")
    print(f"  genai/raw (medians) {statistics.median(g) / statistics.median(r):.3f}\n")

    print("| TTFT (s) | stateful pipeline | paged attention + prefix cache |")
    print("|---|---|---|")
    rows = {}
    with tempfile.TemporaryDirectory() as cache:
        for kind in ("stateful", "prefix"):
            cmd = [sys.executable, "-m", "bench.kernel_bound", "--child", kind,
                   "--model", str(model), "--cache", cache]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rows[kind] = json.loads(out.strip().splitlines()[-1])
    labels = {f"ttft_{i + 1}": f"short prompt {i + 1} after priming" for i in range(3)}
    labels |= {"ttft_long_1": "510-token prompt", "ttft_long_2": "the same 510-token prompt again"}
    for key, label in labels.items():
        print(f"| {label} | {rows['stateful'][key]:.3f} | {rows['prefix'][key]:.3f} |")
    print(f"(the template's fixed head: {rows['stateful']['template_tokens']} tokens)\n")
    with tempfile.TemporaryDirectory() as cache:
        template_reuse(model, cache)


if __name__ == "__main__":
    main()
