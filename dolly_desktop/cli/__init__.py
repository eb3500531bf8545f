"""The one entry point: the GUI by default, headless subcommands that reuse the core."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from dolly_desktop import __version__
from dolly_desktop.cli import history, models, serve
from dolly_desktop.errors import DollyError
from dolly_desktop.generation.params import RANGES, GenerationParams
from dolly_desktop.logs import setup_logging
from dolly_desktop.models.jobs import CHILD_FLAG, child_main

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage dump
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: {message}\n")


def add_param_options(p: argparse.ArgumentParser) -> None:
    """--max-new-tokens, --temperature, ... straight from the core's ranges."""
    defaults = GenerationParams()
    for name, r in RANGES.items():
        default = getattr(defaults, name)
        p.add_argument(
            f"--{name.replace('_', '-')}",
            type=int if r.integer else float,
            default=default,
            metavar="N" if r.integer else "X",
            help=f"{r.label}, {r.low:g} to {r.high:g} (default: {default})",
        )
    p.add_argument("--greedy", action="store_true", help="greedy decoding (no sampling)")


def params_from_args(a: argparse.Namespace) -> GenerationParams:
    values = {name: getattr(a, name) for name in RANGES}
    return GenerationParams(greedy=a.greedy, **values)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="dolly-desktop", description="Dolly 2.0 on your desktop, with OpenVINO.")
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
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    g = sub.add_parser("generate", help="answer one instruction on the terminal")
    g.set_defaults(func=cmd_generate)
    where = g.add_mutually_exclusive_group(required=True)
    where.add_argument("--model", help="OpenVINO model folder")
    where.add_argument(
        "--remote",
        metavar="URL",
        help="an OpenAI-compatible server instead: http://HOST:PORT/v1 for dolly-desktop "
        "serve, http://HOST:PORT/v3 for OpenVINO Model Server",
    )
    g.add_argument(
        "--api-key",
        default=serve.env_api_key(),
        metavar="KEY",
        help=f"with --remote: the server's API key (default: ${serve.API_KEY_ENV})",
    )
    g.add_argument("--device", default="CPU", help="OpenVINO device (default: CPU)")
    add_param_options(g)
    g.add_argument("--no-history", action="store_true", help="do not record this run")
    g.add_argument("instruction", nargs="?", help="the instruction (default: read stdin)")

    sub.add_parser("devices", help="list OpenVINO devices").set_defaults(func=cmd_devices)
    for family in (history, models, serve):
        family.register(sub)
    return p


def cmd_generate(a: argparse.Namespace) -> int:
    from dolly_desktop.generation.prompt import build_prompt
    from dolly_desktop.history.store import History

    params = params_from_args(a)
    instruction = a.instruction if a.instruction not in (None, "-") else sys.stdin.read()
    prompt = build_prompt(instruction)  # refuse bad input before the model loads
    if a.remote:
        from dolly_desktop.generation.remote import RemoteEngine

        engine = RemoteEngine(a.remote, api_key=a.api_key)
    else:
        from dolly_desktop.generation.local import Engine

        engine = Engine(a.model, a.device)
    history = History(enabled=not a.no_history)

    # Leaving this block without finish() records the run as cancelled or failed.
    with history.start_run(instruction, params, engine.model, engine.device) as run:

        def out(piece: str) -> None:
            sys.stdout.write(piece)
            sys.stdout.flush()
            run.append(piece)  # after the print: what is saved was always shown

        try:
            result = engine.generate_from_prompt(prompt, params, on_text=out)
        except KeyboardInterrupt:
            engine.cancel()
            return EXIT_INTERRUPTED
        run.finish(result)
    sys.stdout.write("\n")
    print(result.metrics_line(), file=sys.stderr)
    return 0


def self_test(a: argparse.Namespace) -> int:
    """Check an install (or a bundle) end to end: devices, model load, a few tokens."""
    import time

    import openvino

    from dolly_desktop.generation.devices import list_devices
    from dolly_desktop.generation.local import Engine

    t0 = time.perf_counter()
    print(f"dolly-desktop {__version__}, OpenVINO {openvino.get_version()}")
    print("devices: " + ", ".join(d.id for d in list_devices()))
    engine = Engine(a.self_test, "CPU")
    print(f"model loaded in {engine.load_s:.2f} s, warmed up in {engine.warmup_s:.2f} s")
    result = engine.generate("Who is Dolly?", GenerationParams(greedy=True, max_new_tokens=8))
    if result.generated_tokens < 1:
        raise DollyError("the model generated no tokens.")
    print(result.metrics_line())
    print(f"self-test passed in {time.perf_counter() - t0:.2f} s")
    return 0


def cmd_devices(a: argparse.Namespace) -> int:
    from dolly_desktop.generation.devices import list_devices

    for d in list_devices():
        print(f"{d.id}\t{d.name}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [CHILD_FLAG]:  # a frozen bundle started as one of its own child jobs
        return child_main(argv[1:])
    args = build_parser().parse_args(argv)
    setup_logging(console=args.command is not None or args.self_test is not None)
    if args.self_test:
        args.func = self_test
    elif args.command is None:
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
        return 1


def gui_main() -> int:
    return main()  # argv passes through: a bundle's child job runs `--child-job REQUEST`
