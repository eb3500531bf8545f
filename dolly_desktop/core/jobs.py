"""Long model jobs in a child process: export (torch, 7.6 GB peak for 3b) and compression.

A child process keeps torch and its memory out of the app, survives nothing of a crash, and can
be stopped at once: NNCF and optimum have no cancel hook, so cancel kills the process group.
The child is `dolly-desktop models export|compress ...`; it prints one JSON object per line on
stdout ({"stage": ..., "fraction": ...}, the last one with "path"), and its error sentence on
stderr. Qt-free: the GUI calls `run()` on a worker thread and `cancel()` from the GUI thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .atomic import remove_stale_staging
from .compress import Int4Options, Precision
from .errors import DollyError

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]  # (stage, fraction done 0..1), as in core.export


class Cancelled(Exception):
    """The person stopped the job; whatever it was writing has been removed."""


def raise_if_cancelled(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled()


def cli_command() -> list[str]:
    """How to start this app's CLI again: the bundle itself when frozen, else the module."""
    if getattr(sys, "frozen", False):
        return [sys.executable]
    return [sys.executable, "-m", "dolly_desktop.cli"]


def int4_args(int4: Int4Options | None) -> list[str]:
    if int4 is None:
        return []
    args = ["--group-size", str(int4.group_size), "--ratio", repr(int4.ratio)]
    return [*args, "--sym"] if int4.sym else args


class ChildJob:
    """Run one `dolly-desktop models ...` job in a child process; `dest` is what it installs.

    After a kill, every staging folder beside `dest` is removed (atomic.remove_stale_staging):
    run one job per model (dest.parent) at a time.
    """

    def __init__(self, args: Sequence[str], dest: Path, progress: Progress | None = None) -> None:
        self.argv = [*cli_command(), *args]
        self.dest = Path(dest)
        self.progress = progress
        self._proc: subprocess.Popen[str] | None = None
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._stderr: deque[str] = deque(maxlen=40)
        self._drain: threading.Thread | None = None

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def start(self) -> None:
        with self._lock:
            if self._proc is not None:
                raise RuntimeError("a ChildJob runs once")
            if self.cancelled:
                raise Cancelled()
            kwargs: dict = {}
            if os.name == "nt":
                kwargs["creationflags"] = (
                    subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
                )
            else:
                kwargs["start_new_session"] = True  # its own process group, killed as one
            log.info("starting %s", " ".join(self.argv))
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                encoding="utf-8",
                errors="replace",
                bufsize=1,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                **kwargs,
            )
        # Drain stderr on the side: torch/optimum warnings would otherwise fill the pipe and
        # block the child.
        self._drain = threading.Thread(target=self._drain_stderr, daemon=True)
        self._drain.start()

    def wait(self) -> Path:
        """Follow the child to its end: `dest` on success, else Cancelled or DollyError."""
        proc = self._proc
        if proc is None:
            raise RuntimeError("start() first")
        assert proc.stdout is not None
        for line in proc.stdout:
            self._line(line)
        rc = proc.wait()
        if self._drain is not None:
            self._drain.join(timeout=5)
        if rc == 0:  # finished, even if a cancel arrived in the last instant
            return self.dest
        self._clean_up()  # killed, or crashed (e.g. out of memory): staging stays behind
        if self.cancelled:
            raise Cancelled()
        raise DollyError(self._error_sentence(rc))

    def run(self) -> Path:
        self.start()
        return self.wait()

    def cancel(self) -> None:
        """Stop the child now and remove what it was writing. Safe from any thread."""
        self._cancelled.set()
        with self._lock:
            proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        try:
            if os.name == "nt":
                proc.kill()
            else:
                os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        self._clean_up()

    def _clean_up(self) -> None:
        # A killed child runs no `finally`: its staging folders stay until removed here.
        remove_stale_staging(self.dest.parent)
        with contextlib.suppress(OSError):
            self.dest.parent.rmdir()  # only when nothing else of that model is installed

    def _line(self, line: str) -> None:
        try:
            msg = json.loads(line)
            stage, fraction = str(msg["stage"]), float(msg["fraction"])
        except (ValueError, KeyError, TypeError):
            if line.strip():  # a library printing to stdout: keep it for the log
                log.info("child: %s", line.rstrip())
            return
        if self.progress is not None and not self.cancelled:
            self.progress(stage, fraction)

    def _drain_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for line in self._proc.stderr:
            if line.strip():
                self._stderr.append(line.rstrip())
                log.info("child stderr: %s", line.rstrip())

    def _error_sentence(self, rc: int) -> str:
        for line in reversed(self._stderr):
            if line.startswith("dolly-desktop: "):  # the CLI's one-sentence error
                return line.removeprefix("dolly-desktop: ")
        if rc < 0:
            return f"The job was stopped by signal {-rc}: the system may have run out of memory."
        tail = self._stderr[-1] if self._stderr else f"exit code {rc}"
        return f"The job failed: {tail}"


def export_job(
    store: Store,
    src: Path,
    precision: Precision,
    int4: Int4Options | None = None,
    name: str | None = None,
    progress: Progress | None = None,
) -> ChildJob:
    """A child-process export of the checkpoint `src` into the store as `name/precision`."""
    name = name or store.default_name(src)
    args = ["models", "export", str(src), "--precision", precision.value, "--name", name]
    args += ["--store", str(store.root), *int4_args(int4)]
    return ChildJob(args, store.path_for(name, precision.value), progress)


def compress_job(
    store: Store,
    name: str,
    precision: Precision,
    int4: Int4Options | None = None,
    progress: Progress | None = None,
) -> ChildJob:
    """A child-process NNCF compression of the store's `name/FP16` into `name/precision`."""
    args = ["models", "compress", name, "--precision", precision.value]
    args += ["--store", str(store.root), *int4_args(int4)]
    return ChildJob(args, store.path_for(name, precision.value), progress)
