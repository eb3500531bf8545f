"""What bounds a long prefill: time to first token for prompts of about 510 and 1000 tokens,
and decode speed, for CPU plugin settings of the app's engine and for the notebook's way
(optimum-intel OVModelForCausalLM + transformers generate), side by side in one run: each
measurement a child process of its own, the configs interleaved in ABBA order, medians.

    .venv/bin/python -m bench.prefill [--shape 3b] [--precision INT4] [--runs 3]
                                      [--configs "app now" "dq 128" ...] [--tokens 128]
    .venv/bin/python -m bench.prefill --paired "app now" "dq 128" [--rounds 8]

Every app config starts from the engine's own CPU properties (generation/engines/local.py's
CPU_DEFAULTS, which the engine merges in) and changes what it names. The machine's
OPTIMIZATION_CAPABILITIES are printed with the table: they tell which CPU kind it is.
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

SENTENCE = "The quick brown fox jumps over the lazy dog. "  # 10 tokens
HEAD = "Summarise this text. "
# Prompt tokens, Dolly's template included: 30 + 10 per sentence.
LENGTHS = {510: 48, 1000: 97}


def long_instruction(tokens: int) -> str:
    """An instruction whose Dolly prompt is about `tokens` tokens long."""
    return HEAD + SENTENCE * LENGTHS.get(tokens, max(1, (tokens - 30) // 10))


SHORT = "Who is Dolly?"

CONFIGS: dict[str, dict | None] = {  # None: the notebook's way
    "notebook": None,
    "app now": {},  # whatever the engine chooses (before cpu_tuning was wired in: "dq 32")
    "dq 32": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 32},  # OpenVINO's own group
    "f32": {"INFERENCE_PRECISION_HINT": "f32"},
    "KV u8": {"KV_CACHE_PRECISION": "u8"},
    "dq off": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 0},
    "dq 64": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 64},
    "dq 128": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 128},
    "dq 256": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 256},
    "dq 512": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 512},  # divides every Dolly's hidden sizes
    "dq 2560": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 2560},  # a whole row of most weights
    "f32 + dq 128": {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": 128},
    "PA backend": {"ATTENTION_BACKEND": "PA"},
}


def date_tokens() -> list[tuple[float, float]]:
    """Every token the engines stream from now on, dated in wall and CPU time (all threads of
    this process): on a shared machine the CPU seconds a prefill takes move far less than its
    wall time."""
    from dolly_desktop.generation.engines import streaming

    marks: list[tuple[float, float]] = []
    write = streaming.TokenStreamer.write

    def dated(self, token):
        marks.append((time.perf_counter(), time.process_time()))
        return write(self, token)

    streaming.TokenStreamer.write = dated
    return marks


def child_app(model: str, cache: str, props: dict, lengths: list[int], tokens: int) -> dict:
    from dolly_desktop.generation.engines.local import Engine
    from dolly_desktop.generation.params import GenerationParams

    marks = date_tokens()
    engine = Engine(model, cache_dir=Path(cache), properties=props)

    def run(instruction: str, n: int) -> tuple[dict, int]:
        marks.clear()
        wall, cpu = time.perf_counter(), time.process_time()
        r = engine.generate(instruction, GenerationParams(greedy=True, max_new_tokens=n))
        (w0, c0), (w1, c1) = marks[0], marks[-1]
        steps = len(marks) - 1
        return dict(
            ttft=w0 - wall,
            ttft_cpu=c0 - cpu,
            tps=steps / (w1 - w0) if steps else 0.0,
            cpu_ms=(c1 - c0) / steps * 1000 if steps else 0.0,
        ), r.input_tokens

    return _measure(run, lengths, tokens)


def _measure(run, lengths: list[int], tokens: int) -> dict:
    """Decode after a short prompt, then each long prompt's first token (and a few more)."""
    out: dict = {}
    d, _ = run(SHORT, tokens)
    out["tps"], out["cpu_ms"] = d["tps"], d["cpu_ms"]
    for n in lengths:
        time.sleep(0.5)
        d, r = run(long_instruction(n), 8)
        out[f"ttft_{n}"], out[f"cpu_{n}"] = d["ttft"], d["ttft_cpu"]
        out[f"in_{n}"] = r
    return out


def child_notebook(model: str, cache: str, lengths: list[int], tokens: int) -> dict:
    from threading import Thread

    from optimum.intel import OVModelForCausalLM
    from transformers import AutoTokenizer, TextIteratorStreamer

    from dolly_desktop.generation.prompt import build_prompt

    class TimedStreamer(TextIteratorStreamer):  # as bench/engine_vs_notebook.py dates tokens
        def __init__(self, *args, **kw) -> None:
            super().__init__(*args, **kw)
            self.marks: list[tuple[float, float]] = []

        def put(self, value) -> None:
            if not self.next_tokens_are_prompt:
                self.marks.append((time.perf_counter(), time.process_time()))
            super().put(value)

    tok = AutoTokenizer.from_pretrained(model)
    ov_model = OVModelForCausalLM.from_pretrained(
        model, device="CPU", ov_config={"CACHE_DIR": cache}
    )

    def run(instruction: str, n: int) -> tuple[dict, int]:
        ids = tok(build_prompt(instruction), return_tensors="pt")
        streamer = TimedStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        kw = dict(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, streamer=streamer)
        wall, cpu = time.perf_counter(), time.process_time()
        th = Thread(target=ov_model.generate, kwargs=kw)
        th.start()
        for _ in streamer:
            pass
        th.join()
        (w0, c0), (w1, c1) = streamer.marks[0], streamer.marks[-1]
        steps = len(streamer.marks) - 1
        return dict(
            ttft=w0 - wall,
            ttft_cpu=c0 - cpu,
            tps=steps / (w1 - w0) if steps else 0.0,
            cpu_ms=(c1 - c0) / steps * 1000 if steps else 0.0,
        ), int(ids["input_ids"].shape[1])

    run(SHORT, 2)  # the notebook's first answer repacks the weights: not timed
    return _measure(run, lengths, tokens)


def child_paired(
    model: str,
    cache: str,
    names: list[str],
    lengths: list[int],
    tokens: int,
    rounds: int,
    threads: int = 0,
) -> dict:
    """Two configs loaded side by side in one process, measured in turns (ABBA): on a machine
    shared with other work, measurements next to each other in time see the same load, where
    separate processes minutes apart do not. Per turn: decode speed and each prompt's TTFT,
    in wall time and in CPU time of the process. With `threads` 1 the CPU time is the work
    itself: no thread spins waiting for another that the machine's other work descheduled."""
    import os

    # Both models' kernels must stay cached, or each turn would pay the other's evictions.
    os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = "1024"
    from dolly_desktop.generation.engines.local import Engine
    from dolly_desktop.generation.params import GenerationParams

    marks = date_tokens()
    extra = {"CPU_RUNTIME_CACHE_CAPACITY": 5000}
    if threads:
        extra["INFERENCE_NUM_THREADS"] = threads
    engines = {
        n: Engine(model, cache_dir=Path(cache) / n.replace(" ", "-"),
                  properties={**CONFIGS[n], **extra})
        for n in names
    }  # fmt: skip
    keys = ["tps", "cpu_ms"] + [f"{m}_{k}" for k in lengths for m in ("ttft", "cpu")]
    out: dict = {n: {k: [] for k in keys} for n in names}
    for r in range(rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            e = engines[n]
            marks.clear()
            res = e.generate(SHORT, GenerationParams(greedy=True, max_new_tokens=tokens))
            (w0, c0), (w1, c1) = marks[0], marks[-1]
            out[n]["tps"].append((len(marks) - 1) / (w1 - w0))
            out[n]["cpu_ms"].append((c1 - c0) / (len(marks) - 1) * 1000)
            for k in lengths:
                marks.clear()
                c = time.process_time()
                res = e.generate(
                    long_instruction(k), GenerationParams(greedy=True, max_new_tokens=1)
                )
                out[n][f"ttft_{k}"].append(res.ttft_s)
                out[n][f"cpu_{k}"].append(marks[0][1] - c)
    return out


def paired(
    model: Path, names: list[str], lengths: list[int], tokens: int, rounds: int, threads: int
) -> None:
    import tempfile as tf

    with tf.TemporaryDirectory() as cache:
        argv = [sys.executable, "-m", "bench.prefill", "--child-paired", json.dumps(names),
                "--model", str(model), "--cache", cache, "--tokens", str(tokens),
                "--rounds", str(rounds), "--threads", str(threads),
                "--prompt-tokens", *map(str, lengths)]  # fmt: skip
        res = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True)
                         .stdout.strip().splitlines()[-1])  # fmt: skip
    a, b = names
    print(f"paired in one process, {rounds} turns each (ABBA), {tokens} greedy decode tokens, "
          f"{threads or 'all'} inference thread(s)")  # fmt: skip
    print(f"| measure | {a} | {b} | {b} / {a}, median of per-turn ratios | per-turn ratios |")
    print("|---|---|---|---|---|")
    labels = {"tps": "decode tok/s", "cpu_ms": "decode CPU ms/token"}
    for key in res[a]:
        ratios = [y / x for x, y in zip(res[a][key], res[b][key], strict=True)]
        kind, _, n = key.partition("_")
        label = labels.get(key) or f"TTFT {n} tokens, {'wall' if kind == 'ttft' else 'CPU'} (s)"
        print(f"| {label} | {statistics.median(res[a][key]):.2f} | "
              f"{statistics.median(res[b][key]):.2f} | {statistics.median(ratios):.3f} | "
              f"{' '.join(f'{x:.2f}' for x in ratios)} |")  # fmt: skip


def spawn(model: Path, cache: Path, props: dict | None, lengths: list[int], tokens: int) -> dict:
    argv = [sys.executable, "-m", "bench.prefill", "--child", json.dumps(props),
            "--model", str(model), "--cache", str(cache), "--tokens", str(tokens),
            "--prompt-tokens", *map(str, lengths)]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1][:160]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def capabilities() -> list[str]:
    import openvino as ov

    return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="3b")
    ap.add_argument("--precision", default="INT4")
    ap.add_argument("--configs", nargs="*", help="a subset of CONFIGS, by name")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128, help="greedy tokens for the decode speed")
    ap.add_argument("--prompt-tokens", type=int, nargs="+", default=[510, 1000])
    ap.add_argument("--paired", nargs=2, metavar="CONFIG", help="two configs in one process")
    ap.add_argument("--rounds", type=int, default=8, help="turns per config with --paired")
    ap.add_argument("--threads", type=int, default=0, help="INFERENCE_NUM_THREADS (--paired)")
    ap.add_argument("--child")
    ap.add_argument("--child-paired")
    ap.add_argument("--model")
    ap.add_argument("--cache")
    a = ap.parse_args()
    if a.child_paired:
        names = json.loads(a.child_paired)
        res = child_paired(a.model, a.cache, names, a.prompt_tokens, a.tokens, a.rounds, a.threads)
        print(json.dumps(res))
        return
    if a.child:
        props = json.loads(a.child)
        if props is None:
            res = child_notebook(a.model, a.cache, a.prompt_tokens, a.tokens)
        else:
            res = child_app(a.model, a.cache, props, a.prompt_tokens, a.tokens)
        print(json.dumps(res))
        return

    from bench.models import cache_dir, ir, machine

    model = ir(a.shape, a.precision)
    names = a.configs or list(CONFIGS)
    print(f"machine: {machine()}; OPTIMIZATION_CAPABILITIES {' '.join(capabilities())}")
    print(f"load average before: {Path('/proc/loadavg').read_text().split()[:3]}")
    if a.paired:
        paired(model, a.paired, a.prompt_tokens, a.tokens, a.rounds, a.threads)
        print(f"load average after: {Path('/proc/loadavg').read_text().split()[:3]}")
        return
    rows: dict[str, list[dict]] = {n: [] for n in names}
    slug = {n: "".join(c if c.isalnum() else "-" for c in n) for n in names}
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".compiled-") as tmp:
        for n in names:  # fill each config's compiled-model cache once
            spawn(model, Path(tmp) / slug[n], CONFIGS[n], [], 2)
        for r in range(a.runs):
            for n in names if r % 2 == 0 else names[::-1]:  # ABBA
                rows[n].append(spawn(model, Path(tmp) / slug[n], CONFIGS[n], a.prompt_tokens,
                                     a.tokens))  # fmt: skip
                print(f"  {n}: {rows[n][-1]}", file=sys.stderr, flush=True)
    print(f"load average after: {Path('/proc/loadavg').read_text().split()[:3]}")
    table(rows, a.prompt_tokens, a.runs, a.tokens)


def table(rows: dict[str, list[dict]], lengths: list[int], runs: int, tokens: int) -> None:
    cols = [("tps", "decode tok/s"), ("cpu_ms", "decode CPU ms/token")]
    for n in lengths:
        cols += [(f"ttft_{n}", f"TTFT {n} (s)"), (f"cpu_{n}", f"TTFT {n} CPU (s)")]
    med = {}
    for name, rs in rows.items():
        ok = [r for r in rs if "error" not in r]
        med[name] = {k: statistics.median(r[k] for r in ok) for k, _ in cols} if ok else None
    base, nb = med.get("app now"), med.get("notebook")
    print(f"medians of {runs} runs; decode: {tokens} greedy tokens after a short prompt; "
          f"prompts of {', '.join(str(n) for n in lengths)} tokens (template included); "
          "CPU: seconds of CPU time of the process (both threads)")  # fmt: skip
    head = [c[1] for c in cols]
    if base:
        head += ["decode / app now", "decode CPU / app now"]
    if nb:
        head += [f"TTFT {n} / notebook, wall / CPU" for n in lengths]
    print("| config | " + " | ".join(head) + " |")
    print("|---" * (len(head) + 1) + "|")
    for name, m in med.items():
        if m is None:
            print(f"| {name} | failed: {rows[name][0]['error']} |")
            continue
        cells = [f"{m[k]:.2f}" if k == "tps" else f"{m[k]:.0f}" if k == "cpu_ms" else f"{m[k]:.2f}"
                 for k, _ in cols]  # fmt: skip
        if base:
            cells += [f"{m['tps'] / base['tps']:.2f}", f"{m['cpu_ms'] / base['cpu_ms']:.2f}"]
        if nb:
            for n in lengths:
                wall, cpu = m[f"ttft_{n}"] / nb[f"ttft_{n}"], m[f"cpu_{n}"] / nb[f"cpu_{n}"]
                cells.append(f"{wall:.2f} / {cpu:.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("per run: decode tok/s, then TTFT wall/CPU (s) per length:")
    for name, rs in rows.items():
        cells = []
        for r in rs:
            if "error" in r:
                cells.append("error")
                continue
            ttfts = [f"{r[f'ttft_{n}']:.2f}/{r[f'cpu_{n}']:.2f}" for n in lengths]
            cells.append(f"{r['tps']:.1f}, " + ", ".join(ttfts))
        print(f"  {name}: " + "; ".join(cells))


if __name__ == "__main__":
    main()
