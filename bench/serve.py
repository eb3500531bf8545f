"""What `dolly-desktop serve` costs: decode tokens/s and time to first token through the HTTP
API (streaming, one client: the app's own RemoteEngine) against the bare engine, on the same
model in the same run, interleaved in ABBA order so both see the same machine state.

Both are timed from the caller's side: from the call to the first streamed piece of text, and
the generated tokens after the first over the time between the first and last pieces.

    .venv/bin/python -m bench.serve [--shape tiny|3b] [--precision INT4] [--model DIR]
                                    [--runs 6] [--tokens 64]
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from dolly_desktop.generation.engine import GenerationResult
from dolly_desktop.generation.local import Engine
from dolly_desktop.generation.params import GenerationParams
from dolly_desktop.generation.remote import RemoteEngine

INSTRUCTION = "Write a love letter to my best friend."

Generate = Callable[[str, GenerationParams, Callable[[str], None]], GenerationResult]


@contextlib.contextmanager
def serving(model: Path) -> Iterator[str]:
    """`dolly-desktop serve` on a free port of 127.0.0.1; yields its base URL once it answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "dolly_desktop.cli", "serve", "--model", str(model)]
    proc = subprocess.Popen([*cmd, "--port", str(port)], stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"serve exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise SystemExit("serve did not start in 300 s")
            with contextlib.suppress(httpx.TransportError):
                httpx.get(f"{url}/models", timeout=2)
                break
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(60)


def measure(generate: Generate, tokens: int) -> dict[str, float]:
    """Time to first piece and decode rate as the caller sees them."""
    times: list[float] = []
    t0 = time.perf_counter()
    result = generate(
        INSTRUCTION,
        GenerationParams(greedy=True, max_new_tokens=tokens),
        lambda _: times.append(time.perf_counter()),
    )
    n = result.generated_tokens
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    return {
        "ttft_s": times[0] - t0 if times else float("nan"),
        "tps": (n - 1) / span if span > 0 else float("nan"),
        "tokens": n,
        "text": result.text,  # type: ignore[dict-item]
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="an IR folder (default: bench/models.py's)")
    ap.add_argument("--shape", default="tiny", help="tiny or 3b (default: tiny)")
    ap.add_argument("--precision", default="INT4")
    ap.add_argument("--runs", type=int, default=6, help="per side; even keeps ABBA balanced")
    ap.add_argument("--tokens", type=int, default=64)
    a = ap.parse_args()

    from bench.models import ir, machine

    model = a.model or ir(a.shape, a.precision)
    print(f"machine: {machine()}")
    print(f"model: {model}, greedy, {a.tokens} new tokens, {a.runs} runs each, ABBA order\n")
    engine = Engine(model)
    with serving(model) as url:
        remote = RemoteEngine(url, timeout=120)
        ways: dict[str, Generate] = {"engine": engine.generate, "serve": remote.generate}
        for generate in ways.values():  # warm-up: compiled kernels, connections
            generate(INSTRUCTION, GenerationParams(greedy=True, max_new_tokens=4), lambda _: None)
        rows: dict[str, list[dict[str, float]]] = {k: [] for k in ways}
        for i in range(a.runs):
            # ABBA order: whichever runs second in a round measured ~7% faster here.
            for name in list(ways)[:: 1 if i % 2 == 0 else -1]:
                rows[name].append(measure(ways[name], a.tokens))
        remote.close()

    same = rows["engine"][0]["text"] == rows["serve"][0]["text"]
    med = {
        name: {k: statistics.median(r[k] for r in runs) for k in ("ttft_s", "tps")}
        for name, runs in rows.items()
    }
    e, s = med["engine"], med["serve"]
    print("| measure (median) | bare engine | through serve | serve/engine |")
    print("|---|---|---|---|")
    print(f"| decode tokens/s | {e['tps']:.2f} | {s['tps']:.2f} | {s['tps'] / e['tps']:.3f} |")
    print(
        f"| time to first token (ms) | {e['ttft_s'] * 1000:.1f} | {s['ttft_s'] * 1000:.1f} "
        f"| {s['ttft_s'] / e['ttft_s']:.2f} |"
    )
    print(f"\nTTFT added by HTTP: {(s['ttft_s'] - e['ttft_s']) * 1000:+.1f} ms; same text: {same}")
    for name, runs in rows.items():
        tps = ", ".join(f"{r['tps']:.2f}" for r in runs)
        print(f"{name} tokens/s by run: {tps}")


if __name__ == "__main__":
    main()
