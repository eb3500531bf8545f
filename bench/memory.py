"""Resident memory across distinct prompt lengths, before and after the engine bounds its
kernel caches, side by side in one run (each config a child process of its own: oneDNN reads
its cache size from the environment once per process).

Every new prompt length is a new input shape for the CPU plugin, which compiles kernels for
it and keeps them. Each child loads the engine as the app does, answers the longest prompt
once (so that buffers sized by the longest prompt are in the baseline, not in the growth),
then answers instructions of distinct lengths in a shuffled order (4 greedy tokens each) and
reads its RSS after each checkpoint, then asks 200 of those lengths again (which must add
nothing). The greedy tokens of every answer are hashed in order: a config that changes any
answer shows a different digest.

    .venv/bin/python -m bench.memory                              # tiny model, 200 and 2,000
    .venv/bin/python -m bench.memory --shape 3b --precision INT4 --lengths 50 200   # slow

`--serve` measures `dolly-desktop serve` itself (a real child, real HTTP), as the audit of issue
23 did: instructions of 1 to 1,600 words, each length once in a shuffled order, 4 greedy tokens
each, one request at a time, the server's RSS read from /proc after 20, 200 and 400 lengths,
with batching on (its KV cache as before, 1 GB, and as now, the default) and off:

    .venv/bin/python -m bench.memory --serve                      # tiny INT4, about 3 minutes
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import proc

MB = 1e6
OV_RUNTIME_CACHE_DEFAULT = 5000  # OpenVINO 2026.4's CPU_RUNTIME_CACHE_CAPACITY
ONEDNN_CACHE_DEFAULT = 1024  # oneDNN's primitive cache

# env: set before the engine module is imported; props: on top of the app's CPU defaults;
# trim: malloc_trim(0) after every answer (glibc's heap handed back to the kernel).
CONFIGS: dict[str, dict] = {
    "before (OpenVINO defaults)": dict(
        env={"ONEDNN_PRIMITIVE_CACHE_CAPACITY": str(ONEDNN_CACHE_DEFAULT)},
        props={"CPU_RUNTIME_CACHE_CAPACITY": OV_RUNTIME_CACHE_DEFAULT},
        trim=False,
    ),
    "malloc_trim only": dict(
        env={"ONEDNN_PRIMITIVE_CACHE_CAPACITY": str(ONEDNN_CACHE_DEFAULT)},
        props={"CPU_RUNTIME_CACHE_CAPACITY": OV_RUNTIME_CACHE_DEFAULT},
        trim=True,
    ),
    "runtime cache 0 (the audit's try)": dict(
        env={"ONEDNN_PRIMITIVE_CACHE_CAPACITY": str(ONEDNN_CACHE_DEFAULT)},
        props={"CPU_RUNTIME_CACHE_CAPACITY": 0},
        trim=False,
    ),
    "runtime cache 32 only": dict(
        env={"ONEDNN_PRIMITIVE_CACHE_CAPACITY": str(ONEDNN_CACHE_DEFAULT)}, props={}, trim=False
    ),
    "after (the app: both caches 32)": dict(env={}, props={}, trim=False),
    "after + malloc_trim": dict(env={}, props={}, trim=True),
}
BEFORE = "before (OpenVINO defaults)"


def anon_mb() -> float:
    return proc.status()["RssAnon"] * 1e9 / MB


def rss_mb() -> float:
    return proc.status()["VmRSS"] * 1e9 / MB


def child(model: str, cache: str, config: dict, checkpoints: list[int], seed: int) -> dict:
    os.environ.update(config["env"])  # before OpenVINO creates its first kernel
    import dolly_desktop.generation.engines.local as local
    from dolly_desktop.generation.params import GenerationParams
    from dolly_desktop.generation.prompt import build_prompt

    libc = ctypes.CDLL(None)
    engine = local.Engine(model, cache_dir=Path(cache), properties=config["props"])
    params = GenerationParams(greedy=True, max_new_tokens=4)
    loaded = rss_mb()
    # Instruction lengths n = 1.. whose prompt plus 4 new tokens fits the context.
    base = engine.count_tokens(build_prompt("word"))
    longest = engine.context_length - 4 - base + 1
    assert engine.count_tokens(build_prompt("word " * longest)) == base + longest - 1
    lengths = list(range(1, longest + 1))
    random.Random(seed).shuffle(lengths)
    lengths.remove(longest)
    digest = hashlib.sha256()

    def answer(n: int) -> float:
        t0 = time.perf_counter()
        r = engine.generate("word " * n, params)
        digest.update(json.dumps(r.token_ids).encode())
        if config["trim"]:
            libc.malloc_trim(0)
        return time.perf_counter() - t0

    answer(longest)
    start = {"rss": rss_mb(), "anon": anon_mb()}
    points, done, times = [], 0, []
    for cp in checkpoints:
        times += [answer(n) for n in lengths[done : cp - 1]]  # the longest counts as seen
        done = cp - 1
        points.append(
            dict(lengths=cp, rss=rss_mb(), anon=anon_mb(), ms=1e3 * statistics.median(times))
        )
    again = [answer(n) for n in lengths[: min(200, done)]]  # lengths seen before
    after_again = anon_mb() - start["anon"]
    t0 = time.perf_counter()
    libc.malloc_trim(0)  # what the engine's trim costs at this point
    trim_ms = (time.perf_counter() - t0) * 1e3
    # What a person sees: a short instruction, 64 tokens, its decode speed and first token.
    speed = [
        engine.generate("Who is Dolly?", GenerationParams(greedy=True, max_new_tokens=64))
        for _ in range(5)
    ]
    return dict(
        loaded=loaded, start=start, points=points, again_rss=after_again,
        again_ms=1e3 * statistics.median(again), trim_ms=trim_ms,
        tps=statistics.median(r.tokens_per_s for r in speed),
        ttft_ms=1e3 * statistics.median(r.ttft_s for r in speed[1:]),
        digest=digest.hexdigest()[:12], answers=len(lengths) + 1,
    )  # fmt: skip


def spawn(model: Path, cache: Path, name: str, checkpoints: list[int], seed: int) -> dict:
    argv = [sys.executable, "-m", "bench.memory", "--child", name, "--model", str(model),
            "--cache", str(cache), "--seed", str(seed),
            "--lengths", *map(str, checkpoints)]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1][:160]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine_line() -> str:
    import openvino as ov

    from bench.models import machine

    names = [ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln]
    cpu = names[0].split(":", 1)[1].strip() if names else "?"
    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return f"{machine()}; /proc/cpuinfo model name: {cpu}; CPU capabilities: {' '.join(caps)}"


# `serve` as the audit ran it: its arguments, and the environment on top of ours.
SERVE_CONFIGS: dict[str, dict] = {
    "batching, KV cache 1 GB (before)": dict(args=["--kv-cache", "1"], env={}),
    "batching, default KV cache (after)": dict(args=[], env={}),
    "batching, default KV cache, oneDNN cache 1,024": dict(
        args=[], env={"ONEDNN_PRIMITIVE_CACHE_CAPACITY": str(ONEDNN_CACHE_DEFAULT)}
    ),
    "batching off": dict(args=["--batching", "off"], env={}),
}
SERVE_WORDS = 1600  # the longest instruction: 1,600 words and the template fit 2,048 tokens
SERVE_LENGTHS = [20, 200, 400]


def proc_mb(pid: int) -> dict[str, float]:
    """VmRSS and RssAnon of another process and its children, in MB: `serve`'s batching
    engine keeps the model in a child process of its own."""
    import psutil

    out = {"VmRSS": 0.0, "RssAnon": 0.0}
    parent = psutil.Process(pid)
    for p in (parent, *parent.children(recursive=True)):
        try:
            status = Path(f"/proc/{p.pid}/status").read_text()
        except OSError:  # ended meanwhile
            continue
        for line in status.splitlines():
            key, _, rest = line.partition(":")
            if key in out:
                out[key] += int(rest.split()[0]) * 1024 / MB
    return out


def serve_run(model: Path, config: dict, checkpoints: list[int], seed: int) -> dict:
    """One `dolly-desktop serve` child: RSS after each checkpoint of new prompt lengths."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as home:
        env = {**os.environ, **config["env"], "DOLLY_DESKTOP_HOME": home}
        argv = [sys.executable, "-m", "dolly_desktop.cli", "serve", "--model", str(model),
                "--port", str(port), *config["args"]]  # fmt: skip
        err = Path(home) / "stderr"
        with err.open("wb") as f:
            child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=f, env=env)
        url = f"http://127.0.0.1:{port}/v1"
        try:
            deadline = time.monotonic() + 120
            while True:
                if child.poll() is not None or time.monotonic() > deadline:
                    return {"error": err.read_text().strip().splitlines()[-1][:160]}
                with contextlib.suppress(httpx.TransportError):
                    httpx.get(f"{url}/models", timeout=2)
                    break
                time.sleep(0.1)
            kv = re.search(r"KV cache [\d.]+ [MG]B", err.read_text())
            lengths = list(range(1, SERVE_WORDS + 1))
            random.Random(seed).shuffle(lengths)
            loaded = proc_mb(child.pid)
            points, times = [], []
            with httpx.Client(timeout=120) as http:
                for i, n in enumerate(lengths[: max(checkpoints)], 1):
                    t0 = time.perf_counter()
                    body = {"model": "m", "prompt": "word " * n, "max_tokens": 4, "temperature": 0}
                    r = http.post(f"{url}/completions", json=body)
                    times.append(time.perf_counter() - t0)
                    if r.status_code != 200:
                        return {"error": f"length {n}: HTTP {r.status_code} {r.text[:120]}"}
                    if i in checkpoints:
                        points.append(dict(lengths=i, **proc_mb(child.pid)))
            return dict(
                kv=kv[0][len("KV cache ") :] if kv else "-", loaded=loaded, points=points,
                ms=1e3 * statistics.median(times),
            )  # fmt: skip
        finally:
            child.terminate()
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def serve_main(a: argparse.Namespace) -> None:
    from bench.models import ir

    print(f"machine: {machine_line()}")
    model = ir(a.shape, a.precision or "INT4")
    checkpoints = a.lengths or SERVE_LENGTHS
    names = a.configs or list(SERVE_CONFIGS)
    rows = {}
    for name in names:
        rows[name] = serve_run(model, SERVE_CONFIGS[name], checkpoints, a.seed)
        print(f"  {name}: {rows[name]}", file=sys.stderr, flush=True)
    first, *rest = checkpoints
    print(f"\n`serve` on {a.shape} {a.precision or 'INT4'}: instructions of 1 to {SERVE_WORDS} "
          "words, each length once, 4 greedy tokens each; RSS of the server process\n")  # fmt: skip
    cols = [f"growth after {n} (MB)" for n in rest]
    print(f"| config | KV cache | RSS loaded (MB) | RSS after {first} lengths (MB) | "
          + " | ".join(cols) + " | anonymous growth (MB) | ms a request |")  # fmt: skip
    print("|---" * (len(cols) + 6) + "|")
    for name, r in rows.items():
        if "error" in r:
            print(f"| {name} | failed: {r['error']} |")
            continue
        base, *later = r["points"]
        growth = [f"{p['VmRSS'] - base['VmRSS']:+.0f}" for p in later]
        anon = "/".join(f"{p['RssAnon'] - base['RssAnon']:+.0f}" for p in later)
        print(f"| {name} | {r['kv']} | {r['loaded']['VmRSS']:.0f} | {base['VmRSS']:.0f} | "
              + " | ".join(growth) + f" | {anon} | {r['ms']:.0f} |")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="tiny", help="tiny (default) or 3b (slow to build and run)")
    ap.add_argument("--precision", help="FP16 (default), or INT4 (--serve's default)")
    ap.add_argument("--lengths", type=int, nargs="+",
                    help="distinct prompt lengths after which RSS is read (default: 200 2000; "
                    "--serve: 20 200 400, the first the level growth is counted from)")  # fmt: skip
    ap.add_argument("--configs", nargs="*", help="a subset of CONFIGS (SERVE_CONFIGS), by name")
    ap.add_argument("--serve", action="store_true", help="measure `serve` over HTTP")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child")
    ap.add_argument("--model")
    ap.add_argument("--cache")
    a = ap.parse_args()
    if a.serve:
        serve_main(a)
        return
    a.precision = a.precision or "FP16"
    a.lengths = a.lengths or [200, 2000]
    if a.child:
        print(json.dumps(child(a.model, a.cache, CONFIGS[a.child], a.lengths, a.seed)))
        return

    from bench.models import cache_dir, ir

    print(f"machine: {machine_line()}")
    model = ir(a.shape, a.precision)
    names = a.configs or list(CONFIGS)
    rows = {}
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".compiled-") as tmp:
        for name in names:
            rows[name] = spawn(model, Path(tmp) / str(len(rows)), name, a.lengths, a.seed)
            print(f"  {name}: {rows[name]}", file=sys.stderr, flush=True)
    print(f"\n{a.shape} {a.precision}, {a.precision} weights, 4 greedy tokens an answer; growth is")
    print("anonymous RSS against the engine right after its longest prompt\n")
    cols = [f"growth after {n} lengths (MB)" for n in a.lengths]
    print("| config | RSS loaded (MB) | after the longest prompt (MB) | " + " | ".join(cols)
          + " | growth after 200 repeats (MB) | ms an answer | decode tok/s | TTFT short (ms) "
          "| output as before |")  # fmt: skip
    print("|---" * (len(cols) + 8) + "|")
    ref = rows.get(BEFORE, {}).get("digest")
    for name, r in rows.items():
        if "error" in r:
            print(f"| {name} | failed: {r['error']} |")
            continue
        growth = [f"{p['anon'] - r['start']['anon']:+.0f}" for p in r["points"]]
        same = "reference" if name == BEFORE else ("yes" if r["digest"] == ref else "**no**")
        print(f"| {name} | {r['loaded']:.0f} | {r['start']['rss']:.0f} | " + " | ".join(growth)
              + f" | {r['again_rss']:+.0f} | {r['points'][-1]['ms']:.1f} | {r['tps']:.0f} "
              f"| {r['ttft_ms']:.1f} | {same} |")  # fmt: skip
    trims = [f"{r['trim_ms']:.2f}" for r in rows.values() if "trim_ms" in r]
    print(f"\nmalloc_trim(0) at the end of each child: {', '.join(trims)} ms")


if __name__ == "__main__":
    main()
