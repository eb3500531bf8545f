"""`dolly-desktop history ...` subcommands."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `history` parser; set `func` on it (see dolly_desktop/cli.py)."""
