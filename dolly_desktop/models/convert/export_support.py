"""Export support (torch + optimum-intel, the `export` extra) installed when a person asks for
it, not with the app: chatting with a downloaded model needs none of its ~5 GB.

pip runs in a child process in the app's own environment, with a rough progress (pip has no
progress API: it is read from the lines pip prints) and a cancel that kills it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from dolly_desktop.errors import DollyError
from dolly_desktop.models.cancel import Cancelled, Progress

log = logging.getLogger(__name__)

APPROX_BYTES = 5_300_000_000  # measured: a venv with the extra, less one without (Linux, CUDA)
# A source checkout (the project's pyproject.toml above the package): install from it.
_ROOT = next(
    (p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file()),
    Path(__file__).resolve().parents[3],
)


def available() -> bool:
    return importlib.util.find_spec("optimum") is not None and (
        importlib.util.find_spec("optimum.intel") is not None
    )


# The locked set with the extra (scripts/lock): adding it changes no run-time package.
LOCKED = _ROOT / "requirements" / "export.txt"


def pip_command() -> list[str] | None:
    """The pip call that adds the extra to this environment; None in a bundle (no pip)."""
    if getattr(sys, "frozen", False):
        return None
    if LOCKED.is_file():  # a source checkout, as ./run-app sets up
        return [sys.executable, "-m", "pip", "install", "--require-hashes", "-r", str(LOCKED)]
    return [sys.executable, "-m", "pip", "install", "dolly-desktop[export]"]  # a wheel: no lock


def how_to_install() -> str:
    """The one sentence with the one command, for the terminal and the window."""
    cmd = pip_command()
    if cmd is None:
        return (
            "Exporting a PyTorch checkpoint needs the Python install of Dolly Desktop with the "
            "'export' extra; this bundle downloads and compresses ready-made models only."
        )
    shown = " ".join(f"'{c}'" if "[" in c else c for c in cmd)
    return f"Exporting needs export support (torch and optimum-intel, about 5 GB): run {shown}"


def install(progress: Progress | None = None, cancel: threading.Event | None = None) -> None:
    """Install the extra with pip in a child process; Cancelled if `cancel` is set meanwhile."""
    cmd = pip_command()
    if cmd is None:
        raise DollyError(how_to_install())
    report = progress or (lambda stage, frac: None)
    proc = subprocess.Popen(
        [*cmd, "--progress-bar", "off"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=os.name != "nt",
    )
    stopper = threading.Thread(target=_kill_on_cancel, args=(proc, cancel), daemon=True)
    stopper.start()
    seen, tail = 0, ""
    assert proc.stdout is not None
    for line in proc.stdout:
        tail = line.strip() or tail
        log.info("pip: %s", line.rstrip())
        if line.startswith(("Collecting", "Requirement already")):
            seen += 1
            report("resolving packages", min(0.3, seen / 200))
        elif "Downloading" in line[:20]:
            report("downloading", 0.5)
        elif line.startswith("Installing collected packages"):
            report("installing", 0.8)
    rc = proc.wait()
    if cancel is not None and cancel.is_set():
        raise Cancelled()
    if rc != 0:
        raise DollyError(f"Installing export support failed: {tail}")
    importlib.invalidate_caches()
    report("done", 1.0)


def _kill_on_cancel(proc: subprocess.Popen[str], cancel: threading.Event | None) -> None:
    if cancel is None:
        return
    while proc.poll() is None:
        if cancel.wait(0.2):
            if os.name == "nt":
                proc.kill()
            else:
                os.killpg(proc.pid, signal.SIGKILL)
            return
