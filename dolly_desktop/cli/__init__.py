"""The one entry point: the window by default, headless subcommands (one module each:
generate, devices, history, models, serve, docs, compare, tune) over the same rooms the window
uses.

May import everything below it: ui and server (it starts them), history, generation, models,
the basics. Heavy packages (openvino, PySide6, starlette) only inside the command that needs
them, so `--help`, `history` and `generate --remote` start light.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from dolly_desktop import __version__
from dolly_desktop.children import CHILDREN
from dolly_desktop.cli import compare, devices, docs, generate, history, models, serve, tune
from dolly_desktop.cli.options import EXIT_BAD_INPUT, EXIT_FAILED, Parser
from dolly_desktop.errors import DollyError
from dolly_desktop.generation.tuning.calibration import MODES, calibrating
from dolly_desktop.logs import setup_logging

CALIBRATION_ENV = "DOLLY_DESKTOP_CALIBRATION"


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="dolly-desktop", description="Dolly 2.0 on your desktop, with OpenVINO.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument(
        "--screenshot",
        metavar="PNG",
        help="GUI: run a scripted generation, save a picture of the window to PNG and quit",
    )
    p.add_argument("--model", help="GUI: load this model folder instead of the last one")
    p.add_argument(
        "--self-test",
        metavar="MODEL_DIR",
        help="load MODEL_DIR, generate a few "
        "tokens, print the metrics; exit non-zero on any failure",
    )
    p.add_argument(
        "--no-calibration",
        action="store_true",
        help="keep the built-in CPU settings: neither use what was measured (see tune) nor "
        "measure while idle (the window does, once per model on a machine)",
    )
    sub = p.add_subparsers(dest="command", parser_class=Parser)

    for family in (generate, devices, history, models, serve, docs, compare, tune):
        family.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in CHILDREN:  # a frozen bundle started as one of its own children
        module, function = CHILDREN[argv[0]]
        return getattr(importlib.import_module(module), function)(argv[1:])
    args = build_parser().parse_args(argv)
    with calibrating(calibration_mode(args)):
        return _run(args)


def calibration_mode(args: argparse.Namespace) -> str:
    """What engines do about calibration (generation/tuning/calibration.py, MODES). The
    window's engine measures while idle, once per model on a machine; every other command uses
    what was measured: a one-shot generate has no idle time to give, and a server's answers
    should not change settings under its clients. DOLLY_DESKTOP_CALIBRATION (off, use, idle)
    overrides, for test sessions and CI."""
    if args.no_calibration:
        return "off"
    env = os.environ.get(CALIBRATION_ENV, "").strip().lower()
    if env in MODES:
        return env
    window = args.command is None and not args.self_test and not args.screenshot
    return "idle" if window else "use"


def _run(args: argparse.Namespace) -> int:
    setup_logging(console=args.command is not None or args.self_test is not None)
    if args.self_test:
        args.func = generate.self_test
    elif args.command is None:
        from dolly_desktop.ui import qt_libs

        problem = qt_libs.check()  # before Qt loads, which would name one library of several
        if problem:
            print(problem, file=sys.stderr)
            return qt_libs.EXIT_MISSING
        from dolly_desktop.ui.app import run_gui

        return run_gui(model=args.model, screenshot=args.screenshot)
    try:
        return args.func(args)
    except DollyError as e:
        print(f"dolly-desktop: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as e:  # unexpected: one line here, the trace in the log file
        logging.getLogger(__name__).exception("command %s failed", args.command)
        print(f"dolly-desktop: unexpected error: {e} (details in the log)", file=sys.stderr)
        return EXIT_FAILED


def gui_main() -> int:
    return main()  # argv passes through: a bundle's child job runs `--child-job REQUEST`
