"""The app's own child processes, and the command that starts one.

From source a child is `python -m MODULE ARGS...`. A frozen bundle has no `python -m`: it
starts itself with the child's flag, and `cli.main` runs the child's function (imported only
then) with the other arguments. One table serves both ends.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from typing import IO, Any

# flag -> (module, its function that takes the arguments after the flag, returns an exit code)
CHILDREN: dict[str, tuple[str, str]] = {
    "--child-job": ("dolly_desktop.models.child", "child_main"),  # export and compress jobs
    "--calibration-child": ("dolly_desktop.generation.tuning.child", "child_main"),
    "--batching-child": ("dolly_desktop.generation.engines.batching", "bundle_child_main"),
}


def self_command(module: str, *args: str) -> list[str]:
    """The command that runs child `module` (one of CHILDREN's) with `args`."""
    if getattr(sys, "frozen", False):
        flags = [flag for flag, (m, _) in CHILDREN.items() if m == module]
        if not flags:
            raise ValueError(f"{module} is not one of the app's children (children.CHILDREN)")
        return [sys.executable, flags[0], *args]
    return [sys.executable, "-m", module, *args]


def start_child(argv: Sequence[str], stdin: int | IO[Any] | None) -> subprocess.Popen[str]:
    """Start a child process in its own process group (killed as one; Ctrl+C at a terminal
    reaches the parent, who decides), its stdout and stderr as unbuffered lines of text."""
    kwargs: dict[str, Any] = {}
    if os.name == "nt":
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
    else:
        kwargs["start_new_session"] = True
    return subprocess.Popen(
        list(argv),
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
        bufsize=1,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        **kwargs,
    )
