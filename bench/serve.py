"""What continuous batching buys `dolly-desktop serve`: 1, 2, 4 and 8 concurrent streaming
clients (the official `openai` package, one thread each), against one server that answers one
request at a time (`--batching off`) and one that decodes them together (`--batching on`),
side by side in one run. The two servers take turns level by level, in ABBA order.

Per level and server: aggregate tokens/s (all tokens over the wall time from the first request
to the last token), per-stream decode tokens/s (tokens after the first over the time between
the first and last chunk, median over streams), and time to first token (p50, p95 over every
stream of every round). Greedy, so each server's answers are also checked against each other.

    .venv/bin/python -m bench.serve [--shape tiny|3b] [--precision INT4] [--model DIR]
                                    [--clients 1,2,4,8] [--rounds 2] [--tokens 64]
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai

INSTRUCTIONS = [
    "Write a love letter to my best friend.",
    "Explain nuclear fission to a child.",
    "Give me three ideas for a rainy Sunday.",
    "Why is the sky blue?",
    "Summarize the plot of Hamlet.",
    "What should I pack for a week in Norway?",
    "How do bees make honey?",
    "Write a haiku about a lighthouse.",
]


@contextlib.contextmanager
def serving(model: Path, *args: str) -> Iterator[str]:
    """`dolly-desktop serve` on a free port of 127.0.0.1; yields its base URL once it answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "dolly_desktop.cli", "serve", "--model", str(model)]
    proc = subprocess.Popen([*cmd, "--port", str(port), *args], stdout=subprocess.DEVNULL)
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


@dataclass
class Stream:
    start: float
    first: float = float("nan")
    last: float = float("nan")
    tokens: int = 0
    text: str = ""

    @property
    def ttft(self) -> float:
        return self.first - self.start

    @property
    def tps(self) -> float:
        span = self.last - self.first
        return (self.tokens - 1) / span if self.tokens > 1 and span > 0 else float("nan")


def one_round(url: str, clients: int, tokens: int) -> tuple[list[Stream], float]:
    """`clients` streams at once; their records and the wall time of the round."""
    streams: list[Stream | None] = [None] * clients
    start = threading.Barrier(clients + 1)
    pool = [
        openai.OpenAI(base_url=url, api_key="-", max_retries=0, timeout=600) for _ in range(clients)
    ]

    def run(n: int) -> None:
        start.wait()
        s = Stream(time.perf_counter())
        chunks = pool[n].completions.create(
            model="any",
            prompt=INSTRUCTIONS[n % len(INSTRUCTIONS)],
            max_tokens=tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in chunks:
            now = time.perf_counter()
            if chunk.choices and chunk.choices[0].text:
                s.first = s.first if s.first == s.first else now  # nan until the first
                s.last = now
                s.text += chunk.choices[0].text
            if chunk.usage is not None:
                s.tokens = chunk.usage.completion_tokens
        streams[n] = s

    threads = [threading.Thread(target=run, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    done = [s for s in streams if s is not None]
    assert len(done) == clients, "a client failed"
    return done, max(s.last for s in done) - t0


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="an IR folder (default: bench/models.py's)")
    ap.add_argument("--shape", default="tiny", help="tiny or 3b (default: tiny)")
    ap.add_argument("--precision", default="INT4")
    ap.add_argument("--clients", default="1,2,4,8", help="concurrent clients per level")
    ap.add_argument("--rounds", type=int, default=2, help="per level and server (ABBA order)")
    ap.add_argument("--tokens", type=int, default=64, help="max new tokens per answer")
    a = ap.parse_args()
    levels = [int(x) for x in a.clients.split(",")]

    from bench.models import ir, machine

    model = a.model or ir(a.shape, a.precision)
    top = max(levels)
    print(f"machine: {machine()}")
    print(
        f"model: {model}, greedy, {a.tokens} new tokens a stream, {a.rounds} rounds per "
        f"level and server, ABBA order\n"
    )
    queue = str(top)  # nobody is refused: the one-at-a-time server queues the rest
    with (
        serving(model, "--batching", "off", "--queue", queue) as off,
        serving(model, "--batching", "on", "--max-batch", str(top), "--queue", queue) as on,
    ):
        servers = {"one at a time": off, "batching": on}
        for url in servers.values():  # warm-up: compiled kernels, connections
            one_round(url, 2, 4)
        rows = []
        for clients in levels:
            got: dict[str, list[tuple[list[Stream], float]]] = {k: [] for k in servers}
            for r in range(a.rounds):
                for name in list(servers)[:: 1 if r % 2 == 0 else -1]:
                    got[name].append(one_round(servers[name], clients, a.tokens))
            texts = {k: [s.text for s in v[0][0]] for k, v in got.items()}
            for name, rounds in got.items():
                streams = [s for ss, _ in rounds for s in ss]
                aggregate = statistics.median(
                    sum(s.tokens for s in ss) / wall for ss, wall in rounds
                )
                ttfts = [s.ttft for s in streams]
                rows.append(
                    (
                        clients,
                        name,
                        aggregate,
                        statistics.median(s.tps for s in streams),
                        percentile(ttfts, 50) * 1000,
                        percentile(ttfts, 95) * 1000,
                        texts[name] == texts["one at a time"],
                    )
                )
    print("| clients | server | aggregate tok/s | per-stream tok/s | TTFT p50 ms | TTFT p95 ms "
          "| same text as one at a time |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for clients, name, agg, per, p50, p95, same in rows:
        print(f"| {clients} | {name} | {agg:.1f} | {per:.1f} | {p50:.0f} | {p95:.0f} | {same} |")
    print()
    by = {(c, n): agg for c, n, agg, *_ in rows}
    for clients in levels:
        gain = by[(clients, "batching")] / by[(clients, "one at a time")]
        print(f"{clients} clients: batching / one at a time, aggregate tok/s: {gain:.2f}x")


if __name__ == "__main__":
    main()
