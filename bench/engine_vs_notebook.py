"""The app's engine against the notebook's way (optimum-intel OVModelForCausalLM +
transformers generate + TextIteratorStreamer), side by side in one run, plus the memory
bandwidth ceiling. Each measurement runs in a child process of its own so peak RSS and
cold loads are honest.

    .venv/bin/python -m bench.engine_vs_notebook [--shape 3b] [--precision INT4] [--runs 3]
                                                 [--prompt-tokens 510]
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

from bench import proc
from bench.bandwidth import kv_bytes_per_token, read_gbs, weight_bytes_per_token
from bench.prefill import SHORT, long_instruction

LONG = long_instruction(510)  # 510 prompt tokens; --prompt-tokens picks another length


# A pause before each timed answer, as a person reading the last one leaves (both sides wait):
# the app prefills Dolly's template head for the next answer in it.
READING_S = 1.0


def child_app(model: str, cache: str, tokens: int, long_prompt: str = LONG) -> dict:
    from dolly_desktop.generation.engines.local import Engine
    from dolly_desktop.generation.params import GenerationParams

    t0 = time.perf_counter()
    # As the window loads it: warmed up, Dolly's template head kept in the KV cache.
    engine = Engine(model, cache_dir=Path(cache), reuse_template=True)
    load = time.perf_counter() - t0
    noop = lambda s: None  # noqa: E731  (stream text as the app does)
    first = engine.generate(SHORT, GenerationParams(greedy=True, max_new_tokens=4), noop)
    first_token_at = time.time() - (first.total_s - first.ttft_s)
    load_peak = proc.peak_rss_gb()
    proc.reset_peak()
    time.sleep(READING_S)
    short = engine.generate(SHORT, GenerationParams(greedy=True, max_new_tokens=tokens), noop)
    time.sleep(READING_S)
    long = engine.generate(long_prompt, GenerationParams(greedy=True, max_new_tokens=8), noop)
    return dict(
        load_s=load,
        compile_s=engine.load_s,
        first_ttft_s=first.ttft_s,
        ready_s=first_token_at - SPAWNED_AT,
        tps=short.tokens_per_s,
        ttft_short_s=short.ttft_s,
        ttft_long_s=long.ttft_s,
        long_prompt_tokens=long.input_tokens,
        load_peak_gb=load_peak,
        gen_peak_gb=proc.peak_rss_gb(),
    )


def child_notebook(model: str, cache: str, tokens: int, long_prompt: str = LONG) -> dict:
    from threading import Thread

    from optimum.intel import OVModelForCausalLM
    from transformers import AutoTokenizer, TextIteratorStreamer

    class TimedStreamer(TextIteratorStreamer):
        """Records when each generated token arrives, as the app's engine does: the text
        pieces alone would date the first token late (the streamer holds a word back until
        the next one starts)."""

        def __init__(self, *args, **kw) -> None:
            super().__init__(*args, **kw)
            self.token_times: list[float] = []

        def put(self, value) -> None:
            if not self.next_tokens_are_prompt:
                self.token_times.append(time.perf_counter())
            super().put(value)

    from dolly_desktop.generation.prompt import build_prompt

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model)
    ov_model = OVModelForCausalLM.from_pretrained(
        model, device="CPU", ov_config={"CACHE_DIR": cache}
    )
    load = time.perf_counter() - t0

    first_token_at = 0.0

    def run(instruction: str, n: int) -> tuple[float, float, int]:
        nonlocal first_token_at
        ids = tok(build_prompt(instruction), return_tensors="pt")
        streamer = TimedStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        kw = dict(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, streamer=streamer)
        start = time.perf_counter()
        th = Thread(target=ov_model.generate, kwargs=kw)
        th.start()
        for _ in streamer:  # the text, consumed as the notebook's UI does
            pass
        th.join()
        times = streamer.token_times
        first = times[0] - start
        first_token_at = first_token_at or time.time() - (time.perf_counter() - times[0])
        rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
        return first, rate, ids["input_ids"].shape[1]

    first_ttft, _, _ = run(SHORT, 4)
    load_peak = proc.peak_rss_gb()
    proc.reset_peak()
    time.sleep(READING_S)
    ttft_short, tps, _ = run(SHORT, tokens)
    time.sleep(READING_S)
    ttft_long, _, n_long = run(long_prompt, 8)
    return dict(
        load_s=load,
        compile_s=load,
        first_ttft_s=first_ttft,
        ready_s=first_token_at - SPAWNED_AT,
        tps=tps,
        ttft_short_s=ttft_short,
        ttft_long_s=ttft_long,
        long_prompt_tokens=n_long,
        load_peak_gb=load_peak,
        gen_peak_gb=proc.peak_rss_gb(),
    )


SPAWNED_AT = 0.0  # wall-clock time the parent started this child: set in main()


def _spawn(kind: str, model: Path, cache: str, tokens: int, prompt_tokens: int = 510) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.engine_vs_notebook",
            "--child",
            kind,
            "--model",
            str(model),
            "--cache",
            cache,
            "--tokens",
            str(tokens),
            "--spawned-at",
            repr(time.time()),
            "--prompt-tokens",
            str(prompt_tokens),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="3b")
    ap.add_argument("--precision", nargs="+", default=["INT4", "INT8"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=510, help="the long prompt's length")
    ap.add_argument("--spawned-at", type=float)
    ap.add_argument("--child")
    ap.add_argument("--model")
    ap.add_argument("--cache")
    a = ap.parse_args()
    if a.child:
        fn = child_app if a.child == "app" else child_notebook
        global SPAWNED_AT
        SPAWNED_AT = a.spawned_at
        print(json.dumps(fn(a.model, a.cache, a.tokens, long_instruction(a.prompt_tokens))))
        return

    from bench.models import ir, machine

    print(f"machine: {machine()}")
    bw = {n: read_gbs(n) for n in (1, 2)}
    print(f"memory read bandwidth (numpy sum): {bw[1]:.1f} GB/s on 1 thread, {bw[2]:.1f} on 2\n")
    for precision in a.precision:
        model = ir(a.shape, precision)
        weights = (model / "openvino_model.bin").stat().st_size
        rows: dict[str, dict[str, list[float]]] = {"app": {}, "notebook": {}}
        for _ in range(a.runs):
            for kind in ("app", "notebook"):  # interleaved: both see the same machine state
                with tempfile.TemporaryDirectory() as cache:
                    cold = _spawn(kind, model, cache, a.tokens, a.prompt_tokens)
                    warm = _spawn(kind, model, cache, a.tokens, a.prompt_tokens)
                warm["cold_load_s"] = cold["load_s"]
                warm["cold_ready_s"] = cold["ready_s"]
                for k, v in warm.items():
                    rows[kind].setdefault(k, []).append(v)
        med = {k: {m: statistics.median(v) for m, v in r.items()} for k, r in rows.items()}
        app, nb = med["app"], med["notebook"]
        print(f"### {a.shape} {precision}: weights {weights / 1e9:.2f} GB, medians of {a.runs}")
        print("| measure | app engine | notebook | app/notebook |")
        print("|---|---|---|---|")
        long_label = f"TTFT {app['long_prompt_tokens']:.0f}-token prompt (s)"
        measures = [
            ("tps", "decode tokens/s"),
            ("ttft_short_s", "TTFT short prompt (s)"),
            ("ttft_long_s", long_label),
            ("cold_load_s", "load, cold cache (s)"),
            ("load_s", "load, warm cache (s)"),
            ("compile_s", "of which the model compile (s)"),
            ("first_ttft_s", "TTFT of the first answer after the load (s)"),
            ("cold_ready_s", "process start to first token, cold cache (s)"),
            ("ready_s", "process start to first token, warm cache (s)"),
            ("load_peak_gb", "peak RSS loading (GB)"),
            ("gen_peak_gb", "peak RSS generating (GB)"),
        ]
        for key, label in measures:
            print(f"| {label} | {app[key]:.3f} | {nb[key]:.3f} | {app[key] / nb[key]:.2f} |")
        read, skipped = weight_bytes_per_token(model / "openvino_model.xml")
        per_token = read + kv_bytes_per_token(32, 2560, a.tokens, 1.0)  # u8 KV, mid-answer
        ceiling = max(bw.values()) * 1e9 / per_token
        print(
            f"ceiling: {max(bw.values()):.1f} GB/s / {per_token / 1e9:.2f} GB read per token "
            f"(weights less the {skipped / 1e9:.2f} GB input embedding, plus KV) = "
            f"{ceiling:.1f} tok/s; app reaches {app['tps'] / ceiling:.0%}, "
            f"notebook {nb['tps'] / ceiling:.0%}"
        )
        print(
            f"peak RSS generating / weights file: app {app['gen_peak_gb'] * 1e9 / weights:.2f}x, "
            f"notebook {nb['gen_peak_gb'] * 1e9 / weights:.2f}x\n",
            flush=True,
        )


if __name__ == "__main__":
    main()
