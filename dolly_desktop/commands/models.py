"""`dolly-desktop models ...` subcommands."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `models` parser; set `func` on it (see dolly_desktop/cli.py)."""
