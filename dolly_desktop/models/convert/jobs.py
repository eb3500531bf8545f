"""Long model jobs in a child process: export (torch, 7.6 GB peak for 3b) and compression.

A child process keeps torch and its memory out of the app, survives nothing of a crash, and can
be stopped at once: NNCF and optimum have no cancel hook, so cancel kills the process group.

Both ends of the protocol live here: the parent's ChildJob, and the messages and request the
child (models/child.py) reads and writes. The parent starts `python -m dolly_desktop.models.child
REQUEST` (a frozen bundle: `dolly-desktop --child-job REQUEST`), REQUEST being a `JobRequest`
as JSON. The child writes one typed message per line on stdout: `Progress` while it works,
then `Result` or `Error` (its one sentence). stderr carries only logs and library noise.
Qt-free: the GUI calls `run()` on a worker thread and `cancel()` from the GUI thread, at any
time, also before the child has started.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import threading
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from dolly_desktop.atomic import remove_stale_staging
from dolly_desktop.children import self_command, start_child
from dolly_desktop.errors import DollyError
from dolly_desktop.models.cancel import Cancelled, Progress
from dolly_desktop.models.capacity import DEFAULT_KEEP_FREE

log = logging.getLogger(__name__)

EXIT_FAILED, EXIT_BAD_INPUT = 1, 2


# -- the protocol ----------------------------------------------------------------------------


@dataclass(frozen=True)
class JobRequest:
    """What the child is to do: export a checkpoint, or compress an installed FP16."""

    kind: Literal["export", "compress"]
    store: str
    precision: str
    src: str = ""  # export: the checkpoint folder; compress: the model's store name
    name: str | None = None
    int4: dict[str, Any] | None = None
    keep_free: int = DEFAULT_KEEP_FREE


@dataclass(frozen=True)
class ProgressMsg:
    stage: str
    fraction: float


@dataclass(frozen=True)
class ResultMsg:
    path: str
    installed: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ErrorMsg:
    sentence: str


Message = ProgressMsg | ResultMsg | ErrorMsg
_TYPES: dict[str, type[Message]] = {"progress": ProgressMsg, "result": ResultMsg, "error": ErrorMsg}


def encode(msg: Message) -> str:
    kind = next(k for k, t in _TYPES.items() if isinstance(msg, t))
    return json.dumps({"type": kind, **asdict(msg)})


def decode(line: str) -> Message | None:
    """A message, or None for a line that is not one (a library printing to stdout)."""
    try:
        data = json.loads(line)
        return _TYPES[data.pop("type")](**data)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


# -- the parent's end ------------------------------------------------------------------------


def child_command(request: JobRequest) -> list[str]:
    return self_command("dolly_desktop.models.child", json.dumps(asdict(request)))


class ChildJob:
    """Run one export or compression in a child process; `dest` is what it installs.

    After a kill, every staging folder beside `dest` is removed (atomic.remove_stale_staging):
    run one job per model (dest.parent) at a time.
    """

    def __init__(self, request: JobRequest, dest: Path, progress: Progress | None = None) -> None:
        self.request = request
        self.argv = child_command(request)
        self.dest = Path(dest)
        self.progress = progress
        self._proc: subprocess.Popen[str] | None = None
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._stderr: deque[str] = deque(maxlen=40)
        self._drain: threading.Thread | None = None
        self._result: ResultMsg | None = None
        self._error: ErrorMsg | None = None

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def start(self) -> None:
        with self._lock:
            if self._proc is not None:
                raise RuntimeError("a ChildJob runs once")
            if self.cancelled:  # cancelled before it started: nothing runs, nothing installs
                raise Cancelled()
            log.info("starting %s job: %s", self.request.kind, self.request)
            self._proc = start_child(self.argv, subprocess.DEVNULL)
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
        if rc == 0 and self._result is not None:  # finished, even if a cancel came just now
            return Path(self._result.path)
        self._clean_up()  # killed, or crashed (e.g. out of memory): staging stays behind
        if self.cancelled:
            raise Cancelled()
        if self._error is not None:
            raise DollyError(self._error.sentence)
        if rc < 0:
            raise DollyError(
                f"The job was stopped by signal {-rc}: the system may have run out of memory."
            )
        tail = self._stderr[-1] if self._stderr else f"exit code {rc}"
        raise DollyError(f"The job failed: {tail}")

    def run(self) -> Path:
        self.start()
        return self.wait()

    def cancel(self) -> None:
        """Stop the child now and remove what it was writing. Safe from any thread, and before
        `start()`, which then raises Cancelled."""
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
        msg = decode(line)
        if msg is None:
            if line.strip():  # a library printing to stdout: keep it for the log
                log.info("child: %s", line.rstrip())
        elif isinstance(msg, ErrorMsg):
            self._error = msg
        elif isinstance(msg, ResultMsg):
            self._result = msg
            if self.progress is not None and not self.cancelled:
                self.progress("done", 1.0)
        elif self.progress is not None and not self.cancelled:
            self.progress(msg.stage, msg.fraction)

    def _drain_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for line in self._proc.stderr:
            if line.strip():
                self._stderr.append(line.rstrip())
                log.info("child stderr: %s", line.rstrip())
