"""Calibration on this machine (issue 27): the candidates' figures, measured as the app measures
them (generation/tuning/, in a child process, in turns), the choice for a few mixes of prompt
and answer lengths, and how long the calibration took (target: 20 s for 3b INT4 on 2 cores).

    .venv/bin/python -m bench.calibrate [--shape 3b] [--precision INT4] [--budget 20]
                                        [--rounds 3] [--long-tokens 500]

The model is bench/models.py's random-weight one of dolly-v2-3b's exact shape. The result is
stored in a temporary home, not the user's: every run measures afresh. As in the app, the
engine has loaded the model first (here: one load with the rule's settings, not timed), so
its compiled-model cache holds the blob every candidate imports.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

MIXES = {
    "a short question, 256-token answer (no history)": (40, 256),
    "a 500-token prompt, 128-token answer": (500, 128),
    "a 1,500-token passage, 256-token answer": (1500, 256),
    "a 1,500-token passage, 32-token answer": (1500, 32),
}


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="3b")
    ap.add_argument("--precision", default="INT4")
    ap.add_argument("--budget", type=float, default=20.0, help="seconds for extra turns")
    ap.add_argument("--rounds", type=int, default=3, help="most turns per candidate")
    ap.add_argument("--long-tokens", type=int, default=500)
    a = ap.parse_args()

    from bench.models import cache_dir, ir, machine
    from dolly_desktop.generation.engines.local import Engine
    from dolly_desktop.generation.tuning.calibration import DEFAULT_MIX, Mix, busy, describe
    from dolly_desktop.generation.tuning.child import run_calibration
    from dolly_desktop.generation.tuning.rule import cpu_capabilities

    model = ir(a.shape, a.precision)
    blobs = cache_dir() / ".calibrate-ov-cache"
    t = time.perf_counter()
    Engine(model, cache_dir=blobs, calibrate=False, warm_up=False).close()  # the engine's load
    print(f"the engine's load (compiled-model cache {blobs}): {time.perf_counter() - t:.1f} s")
    print(f"machine: {machine()}; capabilities {' '.join(cpu_capabilities())}")
    print(f"model: {a.shape} {a.precision} ({model}); load average before: {loadavg()}")
    t0 = time.perf_counter()

    def say(text: str) -> None:
        print(f"  {time.perf_counter() - t0:6.1f} s  {text}", flush=True)

    with tempfile.TemporaryDirectory(prefix="calibrate-home-") as home:
        os.environ["DOLLY_DESKTOP_HOME"] = home  # the child inherits it
        cal = run_calibration(
            model, DEFAULT_MIX, say, a.budget, a.long_tokens, max_rounds=a.rounds, cache_dir=blobs
        )
    took = time.perf_counter() - t0
    print(f"load average after: {loadavg()}")
    print(f"calibration: {took:.1f} s from start to stored (measuring {cal.seconds:.1f} s)\n")
    print(describe(cal, DEFAULT_MIX))
    rule = cal.figures.get(cal.prior)
    cpu = busy(cal.figures)  # then CPU time decides, and is shown
    print(f"\n| mix | choice | expected {'CPU ' if cpu else ''}s | with the rule's {cal.prior} |")
    print("|---|---|---|---|")
    for label, (p, n) in MIXES.items():
        mix = Mix(p, n)
        c = cal.choice(mix)
        theirs = f"{rule.expected_s(mix, cpu):.2f}" if rule else "-"
        print(f"| {label} | {c} | {cal.figures[c].expected_s(mix, cpu):.2f} | {theirs} |")
    shares = " ".join(f"{f.utilization() or 0:.2f}" for f in cal.figures.values())
    print(f"\nshare of its cores the calibration had in each candidate's prefill: {shares}")
    if rule is not None:
        print(f"\nratios to the rule's {cal.prior} (turns: {rule.turns}):")
        print("| candidate | decode time | decode CPU | TTFT short | TTFT long | TTFT long CPU |")
        print("|---|---|---|---|---|---|")
        for name, f in cal.figures.items():
            print(
                f"| {name} | {f.decode_s / rule.decode_s:.3f} | "
                f"{f.decode_cpu_s / rule.decode_cpu_s:.3f} | {f.short_s / rule.short_s:.3f} | "
                f"{f.long_s / rule.long_s:.3f} | {f.long_cpu_s / rule.long_cpu_s:.3f} |"
            )


if __name__ == "__main__":
    main()
