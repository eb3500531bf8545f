"""What a person's machine sees of the app (issue 22): no display means one sentence, and the
app leaves nothing in the home folder but its own data, config and cache folders (no telemetry
client id in ~/intel)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "dolly_desktop.cli"]
NO_DISPLAY_VARS = ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="X11/Wayland: Linux")
def test_no_display_is_one_sentence_naming_the_headless_commands(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in NO_DISPLAY_VARS}
    env["DOLLY_DESKTOP_HOME"] = str(tmp_path)
    p = subprocess.run(CLI, capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "no display" in lines[0], p.stderr
    assert "generate" in lines[0] and "serve" in lines[0]
    assert "Traceback" not in p.stderr and "xcb" not in p.stderr


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_the_app_leaves_nothing_outside_its_own_folders(tmp_path, tiny_models):
    """generate, a compression with NNCF and the window, with HOME an empty folder."""
    home = tmp_path / "home"
    home.mkdir()
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith("XDG_") and k not in ("DOLLY_DESKTOP_HOME", "HOME")
    }  # fmt: skip
    env |= {"HOME": str(home), "QT_QPA_PLATFORM": "offscreen", "HF_HUB_OFFLINE": "1"}
    runs = [
        ["generate", "--model", str(tiny_models["INT4"]), "--max-new-tokens", "4", "Hi"],
        ["models", "import", str(tiny_models["FP16"]), "--name", "t", "--precision", "FP16"],
        ["models", "compress", "t", "--precision", "INT8"],  # NNCF: it reports usage if let
        ["--model", str(tiny_models["INT4"]), "--screenshot", str(tmp_path / "w.png")],
    ]
    for args in runs:
        p = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, env=env)
        assert p.returncode == 0, (args, p.stderr[-2000:])
    own = subprocess.run(
        [sys.executable, "-c", "from dolly_desktop import paths; "
         "print(paths.data_dir()); print(paths.compiled_cache_dir().parent)"],
        capture_output=True, text=True, env=env, check=True,
    ).stdout.split()  # fmt: skip
    allowed = [Path(d) for d in own] + [home / ".config" / "Dolly Desktop"]  # QSettings
    stray = sorted(
        f for f in _files(home) if not any((home / f).is_relative_to(d) for d in allowed)
    )
    assert not stray, f"left outside the app's folders: {stray}"
