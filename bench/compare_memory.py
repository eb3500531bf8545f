"""Compare three dolly-v2-3b-shaped variants (FP16, INT8, INT4, random weights) and measure the
process's peak memory against what the free-memory check allowed (issue 25).

    .venv/bin/python -m bench.compare_memory            # both plans; builds FP16 and INT8 once

Each plan runs in a fresh child process (`--child PLAN`), as `dolly-desktop compare` would:
- "together": the real free memory, so all three load at once if they fit;
- "one at a time": the comparison is told only the largest variant's need is free, so it must
  load them one after another, each freed before the next.
The parent samples the child's resident memory every 20 ms (the comparison resets the
process's own peak, VmHWM, per engine, so it cannot tell the whole run's); the child reports
what the plan allowed (the sum of the run estimates when together, the largest alone
otherwise) and what each engine added at its peak. The variants are exported from the random
checkpoint with the app's own code (bench/models.py), once.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.models import cache_dir, ir, machine
from bench.proc import GB, status

INSTRUCTION = "Explain to me the difference between nuclear fission and fusion."
TOKENS = 32


def rss_gb(pid: int) -> float:
    """Another process's VmRSS, in GB (0 once it has gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / GB
    except OSError:
        pass
    return 0.0


def child(plan: str) -> dict:
    from dolly_desktop.compare.runs import ONE_AT_A_TIME, contenders, run_comparison
    from dolly_desktop.generation.params import GenerationParams
    from dolly_desktop.models.capacity import available_memory_bytes

    models = contenders([str(ir("3b", p)) for p in ("FP16", "INT8", "INT4")])
    free = available_memory_bytes()
    largest = max(c.run_ram for c in models)
    available = free if plan == "together" else largest
    base = status()["VmRSS"]
    params = GenerationParams(greedy=True, max_new_tokens=TOKENS)
    result = run_comparison(models, INSTRUCTION, "", params, available=available,
                            measure_agreement=False)  # fmt: skip
    allowed = largest if result.loading == ONE_AT_A_TIME else sum(c.run_ram for c in models)
    return {
        "plan": result.loading,
        "free_gb": free / GB,
        "allowed_gb": allowed / GB,
        "base_rss_gb": base,
        "engines": [
            {"label": o.label, "peak_added_gb": (o.peak_rss or 0) / GB, "tok_s": o.tokens_per_s}
            for o in result.outcomes
        ],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", choices=("together", "one"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child)))
        return 0
    for p in ("FP16", "INT8", "INT4"):
        print(f"3b {p}: {ir('3b', p)}", flush=True)
    print(f"{machine()}; models in {cache_dir()}")
    print("| plan | free | allowed | base RSS | peak RSS | peak - base | per engine, peak added |")
    print("|---|---|---|---|---|---|---|")
    for plan in ("together", "one"):
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.compare_memory", "--child", plan],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "DOLLY_DESKTOP_CALIBRATION": "off"},
            cwd=Path(__file__).resolve().parents[1],
        )  # fmt: skip
        peak = 0.0
        while proc.poll() is None:
            peak = max(peak, rss_gb(proc.pid))
            time.sleep(0.02)
        stdout, stderr = proc.communicate()
        if proc.returncode:
            print(f"{plan}: failed\n{stderr[-2000:]}")
            return 1
        r = json.loads(stdout.strip().splitlines()[-1])
        r["peak_rss_gb"] = peak
        per = ", ".join(
            f"{e['label'].split('/')[-1]} {e['peak_added_gb']:.2f}" for e in r["engines"]
        )
        print(f"| {r['plan']} | {r['free_gb']:.1f} GB | {r['allowed_gb']:.2f} GB | "
              f"{r['base_rss_gb']:.2f} GB | {r['peak_rss_gb']:.2f} GB | "
              f"{r['peak_rss_gb'] - r['base_rss_gb']:.2f} GB | {per} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
