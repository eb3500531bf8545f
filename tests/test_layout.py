"""The layering rule at run time: what the light entry points must not load.

import-linter (pyproject, run by ./run-tests) holds the static rule; this checks what Python
really imports, function-level imports included, when a command starts.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("openvino", "openvino_genai", "openvino_tokenizers", "starlette", "PySide6", "torch")


def _loaded_after(code: str) -> set[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    return {m.split(".")[0] for m in json.loads(out.splitlines()[-1])}


@pytest.mark.parametrize(
    ("what", "code", "allowed"),
    [
        ("the remote engine", "import dolly_desktop.generation.engines.remote", ()),
        ("history", "import dolly_desktop.history.store", ()),
        ("the CLI parser", "from dolly_desktop.cli import build_parser; build_parser()", ()),
        ("the server", "import dolly_desktop.server.app", ("starlette",)),
    ],
)
def test_light_modules_load_no_heavy_package(what, code, allowed):
    heavy = _loaded_after(code) & set(HEAVY) - set(allowed)
    assert not heavy, f"importing {what} loaded {sorted(heavy)}"


def test_help_runs_without_heavy_packages():
    p = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "dolly_desktop.cli", "--help"],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0 and "generate" in p.stdout
    loaded = {ln.split("|")[-1].strip().split(".")[0] for ln in p.stderr.splitlines() if "|" in ln}
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
