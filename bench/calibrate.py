"""Calibration on this machine (issue 27): the candidates' figures, measured as the app measures
them (generation/tuning/, in a child process, in turns), the choice for a few mixes of prompt
and answer lengths, and how long the calibration took (target: 20 s for 3b INT4 on 2 cores).

    .venv/bin/python -m bench.calibrate [--shape 3b] [--precision INT4] [--budget 20]
                                        [--rounds 3] [--long-tokens 500]
                                        [--cut 0,2 | --whole | --side-by-side]
                                        [--load-threads 1]

By default it measures as the app does: on copies of the model cut to a few layers
(`--cut`, the app's child.CUT_PARTS), extrapolated to the whole model. `--whole` measures the
whole model (as before cuts). `--side-by-side` runs both, one after the other, and prints both
tables, the wall and CPU seconds each took, and how the cut's extrapolated figures, ratios and
choices agree with the whole model's. With more than two cuts (`--cut 0,1,2,4`), it also
shows what each pair of them would have extrapolated (to choose the cuts).

The model is bench/models.py's random-weight one of dolly-v2-3b's exact shape. The result is
stored in a temporary home, not the user's: every run measures afresh. As in the app, the
engine has loaded the model first (here: one load with the rule's settings, not timed), so
its compiled-model cache holds the blob every whole candidate imports.
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import tempfile
import time
from pathlib import Path

MIXES = {
    "a short question, 256-token answer (no history)": (40, 256),
    "a 500-token prompt, 128-token answer": (500, 128),
    "a 1,500-token passage, 256-token answer": (1500, 256),
    "a 1,500-token passage, 32-token answer": (1500, 32),
}
FIELDS = {  # what the agreement table compares
    "decode": "decode_s",
    "decode CPU": "decode_cpu_s",
    "TTFT short": "short_s",
    "TTFT long": "long_s",
    "TTFT long CPU": "long_cpu_s",
}


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(model, blobs, a, cut):
    """One calibration in its child: (calibration, the parts' figures as measured, wall s,
    CPU s of the child)."""
    from dolly_desktop.generation.tuning.calibration import DEFAULT_MIX
    from dolly_desktop.generation.tuning.child import CalibrationJob, Request

    t0, c0 = time.perf_counter(), children_cpu()

    def say(text: str) -> None:
        print(f"  {time.perf_counter() - t0:6.1f} s  {text}", flush=True)

    req = Request(
        str(model), (DEFAULT_MIX.prompt_tokens, DEFAULT_MIX.answer_tokens),
        budget_s=a.budget, long_tokens=a.long_tokens, max_rounds=a.rounds,
        cache_dir=str(blobs), cut=cut, load_threads=a.load_threads,
    )  # fmt: skip
    print(f"load average before: {loadavg()}")
    job = CalibrationJob(req, say)
    job.start()
    try:
        cal = job.wait()
    except KeyboardInterrupt:
        job.cancel()
        raise
    wall, cpu = time.perf_counter() - t0, children_cpu() - c0
    print(f"load average after: {loadavg()}")
    print(f"calibration: {wall:.1f} s wall, {cpu:.1f} s CPU from start to stored\n")
    return cal, dict(job.figures), wall, cpu


def report(cal) -> None:
    from dolly_desktop.generation.tuning.calibration import DEFAULT_MIX, Mix, busy, describe

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
        print("| candidate | " + " | ".join(FIELDS) + " |")
        print("|---" * (len(FIELDS) + 1) + "|")
        for name, f in cal.figures.items():
            print(f"| {name} | " + " | ".join(_ratio(f, rule, k) for k in FIELDS.values()) + " |")


def _ratio(a, b, field: str) -> str:
    d = getattr(b, field)
    return f"{getattr(a, field) / d:.3f}" if d > 0 else "-"


def agreement(cut, whole, raw) -> None:
    """How the cut's figures (extrapolated) agree with the whole model's, measured in the
    same run: per field, and in ratios to the rule's candidate, and the choices."""
    from dolly_desktop.generation.tuning.calibration import Mix, busy
    from dolly_desktop.generation.tuning.cut import extrapolate, part_name

    names = [n for n in whole.figures if n in cut.figures]
    print("\n## cut (extrapolated) / whole, per candidate")
    print("| candidate | " + " | ".join(FIELDS) + " |")
    print("|---" * (len(FIELDS) + 1) + "|")
    for n in names:
        cells = " | ".join(_ratio(cut.figures[n], whole.figures[n], k) for k in FIELDS.values())
        print(f"| {n} | {cells} |")
    pc, pw = cut.figures.get(cut.prior), whole.figures.get(whole.prior)
    if pc is not None and pw is not None:
        print(f"\n## ratios to the rule's {cut.prior}: cut / whole")
        print("| candidate | " + " | ".join(FIELDS) + " |")
        print("|---" * (len(FIELDS) + 1) + "|")
        for n in names:
            cells = []
            for k in FIELDS.values():
                rc = getattr(cut.figures[n], k) / getattr(pc, k)
                rw = getattr(whole.figures[n], k) / getattr(pw, k)
                cells.append(f"{rc:.2f} / {rw:.2f}")
            print(f"| {n} | " + " | ".join(cells) + " |")
    print("\n## choices: cut / whole")
    for label, (p, t) in MIXES.items():
        mix = Mix(p, t)
        print(f"- {label}: {cut.choice(mix)} / {whole.choice(mix)}")
    print(f"\nCPU time decided: cut {busy(cut.figures)}, whole {busy(whole.figures)}")
    # Each pair of the cuts measured, extrapolated on its own (to choose the cuts).
    parts = sorted({int(n.rsplit("@", 1)[1].split()[0]) for n in raw if "@" in n})
    if len(parts) <= 2:
        return
    said = next((f.cut for f in cut.figures.values() if " of its " in f.cut), "")
    if not said:  # measured whole (a model no bigger than the cuts): no pairs to extrapolate
        return
    layers = int(said.split(" of its ")[1].split()[0])
    print("\n## each pair of cuts, extrapolated / whole (decode, decode CPU, TTFT long, CPU)")
    for pair in itertools.combinations(parts, 2):
        cells = []
        for n in names:
            got = {k: raw.get(part_name(n, k)) for k in pair}
            if None in got.values():
                continue
            f = extrapolate(got, layers)  # type: ignore[arg-type]
            w = whole.figures[n]
            r = [_ratio(f, w, k) for k in ("decode_s", "decode_cpu_s", "long_s", "long_cpu_s")]
            cells.append(f"{n}: {' '.join(r)}")
        print(f"- cuts {pair}: " + "; ".join(cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="3b")
    ap.add_argument("--precision", default="INT4")
    ap.add_argument("--budget", type=float, default=20.0, help="seconds for extra turns")
    ap.add_argument("--rounds", type=int, default=3, help="most turns per candidate")
    ap.add_argument("--long-tokens", type=int, default=500)
    ap.add_argument("--cut", default=None, help="layers kept in each cut, e.g. 0,2")
    ap.add_argument("--load-threads", type=int, default=1, help="candidates loaded at once")
    how = ap.add_mutually_exclusive_group()
    how.add_argument("--whole", action="store_true", help="measure the whole model only")
    how.add_argument("--side-by-side", action="store_true", help="cut, then whole; compare")
    a = ap.parse_args()

    from bench.models import cache_dir, ir, machine
    from dolly_desktop.generation.engines.local import Engine
    from dolly_desktop.generation.tuning.child import CUT_PARTS
    from dolly_desktop.generation.tuning.rule import cpu_capabilities

    parts = tuple(int(x) for x in a.cut.split(",")) if a.cut else CUT_PARTS
    model = ir(a.shape, a.precision)
    blobs = cache_dir() / ".calibrate-ov-cache"
    t = time.perf_counter()
    Engine(model, cache_dir=blobs, calibrate=False, warm_up=False).close()  # the engine's load
    print(f"the engine's load (compiled-model cache {blobs}): {time.perf_counter() - t:.1f} s")
    print(f"machine: {machine()}; capabilities {' '.join(cpu_capabilities())}")
    print(f"model: {a.shape} {a.precision} ({model})")
    with tempfile.TemporaryDirectory(prefix="calibrate-home-") as home:
        os.environ["DOLLY_DESKTOP_HOME"] = home  # the child inherits it
        runs = {}
        for label, cut in (("cut", parts), ("whole", ())):
            if (label == "cut" and a.whole) or (
                label == "whole" and not (a.whole or a.side_by_side)
            ):
                continue
            what = f"cuts of {','.join(map(str, cut))} layers" if cut else "the whole model"
            print(f"\n# {label}: {what}")
            runs[label] = run(model, blobs, a, cut)
            report(runs[label][0])
    if len(runs) == 2:
        print("\n# side by side")
        for label, (_, _, wall, cpu) in runs.items():
            print(f"- {label}: {wall:.1f} s wall, {cpu:.1f} s CPU")
        agreement(runs["cut"][0], runs["whole"][0], runs["cut"][1])


if __name__ == "__main__":
    main()
