"""Logging: the full story in a rotating file under the data directory."""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys

from dolly_desktop import paths

LOG_NAME = "dolly-desktop.log"


def setup_logging(console: bool = False) -> None:
    """File log always; warnings to stderr for the CLI. Safe to call twice."""
    # A windowed bundle has no stdout/stderr; libraries that print (tqdm) would crash.
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115
    root = logging.getLogger()
    if getattr(root, "_dolly_configured", False):
        return
    root.setLevel(logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        paths.log_dir().mkdir(parents=True, exist_ok=True)
        fh = logging.handlers.RotatingFileHandler(
            paths.log_dir() / LOG_NAME, maxBytes=2_000_000, backupCount=3, encoding="utf-8"
        )
        fh.setFormatter(fmt)
        root.addHandler(fh)
    except OSError:
        pass  # a read-only home must not stop the app
    if console:
        ch = logging.StreamHandler(sys.stderr)
        ch.setLevel(logging.WARNING)
        ch.setFormatter(logging.Formatter("dolly-desktop: %(message)s"))
        root.addHandler(ch)
    root._dolly_configured = True  # type: ignore[attr-defined]


def log_file() -> str:
    return str(paths.log_dir() / LOG_NAME)
