"""App start to a visible window, and the app's idle RSS, with and without a model.

Needs an X server (`xvfb-run -a`) and xwininfo. Each run starts the app with an empty data
folder; "visible" is the moment the X server reports the main window viewable.

    xvfb-run -a .venv/bin/python -m bench.startup [--runs 5] [--model 3b-INT4]
    xvfb-run -a .venv/bin/python -m bench.startup --command dist/dolly-desktop/dolly-desktop
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def rss_gb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e9
    return 0.0


def tree_rss_gb(pid: int) -> float:
    """RSS of the process and its children (the bundle's launcher execs, the venv's does not)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return rss_gb(pid) + sum(rss_gb(int(p)) for p in out.stdout.split())


def visible() -> bool:
    out = subprocess.run(["xwininfo", "-name", "Dolly Desktop"], capture_output=True, text=True)
    return "IsViewable" in out.stdout


def one_run(command: list[str], model: Path | None, settle_s: float) -> tuple[float, float]:
    """Seconds to a visible window, and RSS once the app is idle (model loaded, if any)."""
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "DOLLY_DESKTOP_HOME": home}
        argv = command + (["--model", str(model)] if model else [])
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            while not visible():
                if proc.poll() is not None:
                    raise SystemExit(f"the app exited: {proc.stderr.read().decode()[-500:]}")
                time.sleep(0.01)
            shown = time.perf_counter() - t0
            time.sleep(settle_s)  # idle: with a model, long enough to load and warm up
            return shown, tree_rss_gb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--model", help="bench model name, e.g. 3b-INT4: idle RSS with it loaded")
    ap.add_argument("--command", nargs="+")
    a = ap.parse_args()
    if not os.environ.get("DISPLAY") or not shutil.which("xwininfo"):
        raise SystemExit("bench.startup needs an X server and xwininfo: run it under xvfb-run -a")
    command = a.command or [str(Path(sys.executable).with_name("dolly-desktop"))]

    from bench.models import cache_dir

    runs = [one_run(command, None, 2.0) for _ in range(a.runs)]
    shown = statistics.median(r[0] for r in runs)
    idle = statistics.median(r[1] for r in runs)
    print(f"command: {' '.join(command)}")
    print(f"start to visible window: median {shown:.2f} s of {a.runs} "
          f"(min {min(r[0] for r in runs):.2f}, max {max(r[0] for r in runs):.2f})")  # fmt: skip
    print(f"idle RSS, no model: {idle:.3f} GB")
    if a.model:
        model = cache_dir() / a.model
        loaded = [one_run(command, model, 40.0)[1] for _ in range(min(a.runs, 2))]
        weights = (model / "openvino_model.bin").stat().st_size / 1e9
        rss = statistics.median(loaded)
        print(f"idle RSS, {a.model} loaded and warmed up: {rss:.2f} GB "
              f"({rss / weights:.2f}x the {weights:.2f} GB weights file)")  # fmt: skip


if __name__ == "__main__":
    main()
