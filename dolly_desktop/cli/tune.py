"""`dolly-desktop tune MODEL`: calibrate the CPU settings for a model on this machine now
(generation/tuning/), and show the candidates' figures and the choice for the person's own mix
of prompt and answer lengths (the median of their last runs in history)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from dolly_desktop.cli.options import EXIT_INTERRUPTED


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "tune",
        help="measure which CPU settings answer fastest for a model on this machine",
        description="Measure a few CPU settings for MODEL in turns (about 20 s for 3b INT4 "
        "on 2 cores), keep the figures for this CPU, OpenVINO version and weight format, and "
        "show the choice for your usual prompt and answer lengths. The window "
        "does this by itself while idle, unless started with --no-calibration.",
    )
    t.set_defaults(func=cmd_tune)
    t.add_argument("model", help="a model folder, or an installed model (dolly-v2-3b/INT4)")
    what = t.add_mutually_exclusive_group()
    what.add_argument(
        "--show", action="store_true", help="show the stored calibration, measure nothing"
    )
    what.add_argument(
        "--forget",
        action="store_true",
        help="drop the stored calibration: the built-in rule applies until it is measured again",
    )
    t.add_argument("--json", action="store_true", help="print the calibration as JSON")


def history_mix():  # -> Mix; generation may not read history, the interfaces do
    from dolly_desktop.generation.tuning.calibration import LAST_RUNS, mix_from_runs
    from dolly_desktop.history.store import History

    with History() as h:
        entries = h.list(limit=LAST_RUNS)
    return mix_from_runs((e.input_tokens, e.generated_tokens) for e in entries)


def cmd_tune(a: argparse.Namespace) -> int:
    from dolly_desktop.generation.tuning import calibration as cal
    from dolly_desktop.generation.tuning.child import run_calibration
    from dolly_desktop.generation.tuning.rule import weight_format
    from dolly_desktop.models.choice import resolve_model
    from dolly_desktop.models.folder import inspect_model_dir

    model = inspect_model_dir(resolve_model(a.model)).path  # one clear line if it is not one
    mix = history_mix()
    if a.forget:
        cal.forget(cal.machine_key(weight_format(model)))
        print(f"Calibration for {model} forgotten: the built-in rule applies.")
        return 0
    if a.show:
        found = cal.stored(model)
    else:
        say = (lambda text: print(f"  {text}", file=sys.stderr, flush=True)) if not a.json else None
        try:
            found = run_calibration(model, mix, progress=say)
        except KeyboardInterrupt:
            print("dolly-desktop: calibration stopped; nothing was stored.", file=sys.stderr)
            return EXIT_INTERRUPTED
    if a.json:
        out = {"mix": asdict(mix), "calibration": found.to_dict() if found else None}
        if found is not None:
            out["choice"] = found.choice(mix)
        print(json.dumps(out, indent=1))
    else:
        print(cal.describe(found, mix))
    return 0
