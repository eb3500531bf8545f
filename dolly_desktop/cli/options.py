"""What every subcommand shares: exit codes, the one-line parser, the sampling options, the
prompt-lookup choice."""

from __future__ import annotations

import argparse
from typing import NoReturn

from dolly_desktop.generation.params import RANGES, GenerationParams

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
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


LOOKUP_CHOICES = ("on", "off", "auto")  # generation/lookup.LookupMode, without importing openvino


def add_lookup_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--prompt-lookup",
        choices=LOOKUP_CHOICES,
        metavar="on|off|auto",
        help="prompt-lookup decoding: the next tokens guessed from the prompt and checked in one "
        "step; the same answer, faster when it copies from the passage, slower when it does "
        "not; auto: on for prompts with a passage (more than a line or two) (default: off)",
    )
