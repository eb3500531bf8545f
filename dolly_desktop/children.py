"""The app's own child processes, and the command that starts one.

From source a child is `python -m MODULE ARGS...`. A frozen bundle has no `python -m`: it
starts itself with the child's flag, and `cli.main` runs the child's function (imported only
then) with the other arguments. One table serves both ends.
"""

from __future__ import annotations

import sys

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
