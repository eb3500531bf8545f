"""What makes CPU decode faster: the CPU plugin's KV-cache precision, dynamic-quantization
group size and genai's attention backend, on one model, side by side (configs interleaved,
one child process per measurement, medians). Memory is split into the load peak and the peak
while generating, each as anonymous and file-backed (mmap'd) pages.

    .venv/bin/python -m bench.cpu_settings [--shape 3b] [--precision INT4] [--runs 3]
    .venv/bin/python -m bench.cpu_settings --models INT4 INT4-g64 ...   # export variants

Every config spells out every swept property, so the app's CPU_DEFAULTS do not leak in.
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
from bench.engine_vs_notebook import LONG, SHORT

# OpenVINO 2026.4's own CPU values first, then one change at a time.
BASE = {
    "KV_CACHE_PRECISION": "u8",
    "DYNAMIC_QUANTIZATION_GROUP_SIZE": 32,
    "ATTENTION_BACKEND": "PA",
}
CONFIGS: dict[str, dict] = {
    "openvino defaults": {},
    "KV f16": {"KV_CACHE_PRECISION": "f16"},
    "KV u4": {"KV_CACHE_PRECISION": "u4"},
    "dyn-quant off": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 0},
    "dyn-quant 64": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 64},
    "dyn-quant 128": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 128},
    "dyn-quant 512": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 512},  # cpu_tuning's for INT8
    "SDPA backend": {"ATTENTION_BACKEND": "SDPA"},
    "SDPA + dyn-quant 128": {"ATTENTION_BACKEND": "SDPA", "DYNAMIC_QUANTIZATION_GROUP_SIZE": 128},
    # Not a candidate: one core against two tells memory-bound from compute-bound decode.
    "SDPA, 1 thread": {"ATTENTION_BACKEND": "SDPA", "INFERENCE_NUM_THREADS": 1},
}


def child(model: str, cache: str, props: dict, tokens: int) -> dict:
    from dolly_desktop.generation.engines.local import Engine
    from dolly_desktop.generation.params import GenerationParams

    t0 = time.perf_counter()
    engine = Engine(model, cache_dir=Path(cache), properties=props)
    load_s = time.perf_counter() - t0
    noop = lambda s: None  # noqa: E731
    loaded = proc.status()  # the Engine has warmed up and released the mapped weights
    proc.reset_peak()
    short = engine.generate(SHORT, GenerationParams(greedy=True, max_new_tokens=tokens), noop)
    long = engine.generate(LONG, GenerationParams(greedy=True, max_new_tokens=32), noop)
    gen = proc.status()
    return dict(
        load_s=load_s - engine.warmup_s,
        warmup_s=engine.warmup_s,
        tps=short.tokens_per_s,
        ttft_short_s=short.ttft_s,
        tps_at_long=long.tokens_per_s,
        ttft_long_s=long.ttft_s,
        load_peak_gb=loaded["VmHWM"],
        gen_peak_gb=gen["VmHWM"],
        gen_anon_gb=gen["RssAnon"],
        gen_file_gb=gen["RssFile"],
    )


def spawn(model: Path, cache: Path, props: dict, tokens: int) -> dict:
    argv = [sys.executable, "-m", "bench.cpu_settings", "--child", json.dumps(props),
            "--model", str(model), "--cache", str(cache), "--tokens", str(tokens)]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1][:120]}
    return json.loads(out.stdout.strip().splitlines()[-1])


COLUMNS = [
    ("tps", "decode tok/s", "{:.2f}"),
    ("tps_at_long", "decode tok/s after 510-token prompt", "{:.2f}"),
    ("ttft_short_s", "TTFT short (s)", "{:.3f}"),
    ("ttft_long_s", "TTFT 510 tokens (s)", "{:.2f}"),
    ("load_s", "load (s)", "{:.1f}"),
    ("warmup_s", "warm-up (s)", "{:.1f}"),
    ("load_peak_gb", "load peak RSS (GB)", "{:.2f}"),
    ("gen_peak_gb", "peak RSS generating (GB)", "{:.2f}"),
    ("gen_anon_gb", "anon (GB)", "{:.2f}"),
    ("gen_file_gb", "file-backed (GB)", "{:.2f}"),
]


def table(rows: dict[str, list[dict]], weights: dict[str, int]) -> None:
    print("| config | " + " | ".join(c[1] for c in COLUMNS) + " | peak/weights |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for name, runs in rows.items():
        ok = [r for r in runs if "error" not in r]
        if not ok:
            print(f"| {name} | failed: {runs[0]['error']} |")
            continue
        med = {k: statistics.median(r[k] for r in ok) for k, _, _ in COLUMNS}
        cells = [fmt.format(med[k]) for k, _, fmt in COLUMNS]
        ratio = med["gen_peak_gb"] * 1e9 / weights[name]
        print(f"| {name} | " + " | ".join(cells) + f" | {ratio:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="3b")
    ap.add_argument("--precision", default="INT4")
    ap.add_argument("--configs", nargs="*", help="a subset of CONFIGS, by name")
    ap.add_argument("--models", nargs="*", help="precisions or INT4 variants: compare models")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--child")
    ap.add_argument("--model")
    ap.add_argument("--cache")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.model, a.cache, json.loads(a.child), a.tokens)))
        return

    from bench.models import cache_dir, ir, machine

    print(f"machine: {machine()}")
    if a.models:  # the export variants, each under the base runtime settings
        jobs = {f"{a.shape}-{m}": (ir(a.shape, m), dict(BASE)) for m in a.models}
    else:
        model = ir(a.shape, a.precision)
        names = a.configs or list(CONFIGS)
        jobs = {name: (model, {**BASE, **CONFIGS[name]}) for name in names}
    weights = {n: (m / "openvino_model.bin").stat().st_size for n, (m, _) in jobs.items()}
    rows: dict[str, list[dict]] = {name: [] for name in jobs}
    slug = {name: "".join(c if c.isalnum() else "-" for c in name) for name in jobs}
    # Compiled-model caches (1.6 GB a config for 3b INT4): gone when the bench ends.
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".compiled-") as tmp:
        compiled = Path(tmp)
        for name, (model, props) in jobs.items():  # fill each config's cache once
            spawn(model, compiled / slug[name], props, 4)
        for _ in range(a.runs):
            for name, (model, props) in jobs.items():
                rows[name].append(spawn(model, compiled / slug[name], props, a.tokens))
                print(f"  {name}: {rows[name][-1]}", file=sys.stderr, flush=True)
    print(f"medians of {a.runs} runs, {a.tokens} greedy tokens")
    table(rows, weights)


if __name__ == "__main__":
    main()
