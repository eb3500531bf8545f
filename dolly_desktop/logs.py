"""Logging: the full story in a rotating file under the data directory.

Logging never makes things worse: a log file that cannot be written (a full disk, a removed
folder) or a closed stderr is noted once, in one line, and then records are dropped quietly,
instead of logging's "--- Logging error ---" traceback for every record.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys

from dolly_desktop import paths

LOG_NAME = "dolly-desktop.log"


class _Quiet:
    """Mixin for our handlers: the first failure is one line on stderr, later ones nothing."""

    _failed = False

    def handleError(self, record: logging.LogRecord) -> None:
        if self._failed:
            return
        self._failed = True
        e = sys.exc_info()[1]
        why = (e.strerror if isinstance(e, OSError) else None) or e or "unknown error"
        try:
            sys.stderr.write(f"dolly-desktop: {self._what()} cannot be written ({why}).\n")
            sys.stderr.flush()
        except Exception:  # stderr itself is what fails: nothing to say it on
            pass

    def _what(self) -> str:
        return "the log"


class QuietFileHandler(_Quiet, logging.handlers.RotatingFileHandler):
    def _what(self) -> str:
        return f"the log file {self.baseFilename}; log lines are dropped"


class QuietStreamHandler(_Quiet, logging.StreamHandler):
    def handleError(self, record: logging.LogRecord) -> None:
        self._failed = True  # stderr is what failed: nowhere to note it


def file_handler(path: str | os.PathLike[str]) -> logging.Handler:
    """The log file's handler (raises OSError if the file cannot be opened)."""
    fh = QuietFileHandler(path, maxBytes=2_000_000, backupCount=3, encoding="utf-8")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return fh


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
    try:
        paths.log_dir().mkdir(parents=True, exist_ok=True)
        root.addHandler(file_handler(paths.log_dir() / LOG_NAME))
    except OSError:
        pass  # a read-only home must not stop the app
    if console:
        ch = QuietStreamHandler(sys.stderr)
        ch.setLevel(logging.WARNING)
        ch.setFormatter(logging.Formatter("dolly-desktop: %(message)s"))
        root.addHandler(ch)
    root._dolly_configured = True  # type: ignore[attr-defined]


def log_file() -> str:
    return str(paths.log_dir() / LOG_NAME)
