"""One lock for every environment (issue 22): uv.lock agrees with pyproject.toml, the three
installable sets are what it exports, and adding export support changes no run-time package."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from dolly_desktop.models.convert import export_support

ROOT = Path(__file__).resolve().parents[1]
REQ = ROOT / "requirements"
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)\s*(?:;\s*(.*?))?\s*\\?$")


def pins(name: str) -> dict[tuple[str, str], str]:
    """(package, marker) -> version, from one exported requirements file."""
    out = {}
    for line in (REQ / name).read_text(encoding="utf-8").splitlines():
        if m := PIN.match(line):
            out[(m.group(1).lower(), m.group(3) or "")] = m.group(2)
    return out


def test_the_lock_and_its_exports_agree_with_pyproject(tmp_path):
    """`scripts/lock --check`: red when a dependency changes in pyproject.toml without a new
    lock, or when a requirements file is edited by hand."""
    p = subprocess.run([str(ROOT / "scripts" / "lock"), "--check"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_the_check_goes_red_when_pyproject_moves_on(tmp_path):
    work = tmp_path / "repo"
    work.mkdir()
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(ROOT / name, work / name)
    shutil.copytree(ROOT / "scripts", work / "scripts")
    shutil.copytree(REQ, work / "requirements")
    (work / ".venv" / "bin").mkdir(parents=True)
    (work / ".venv" / "bin" / "uv").symlink_to(ROOT / ".venv" / "bin" / "uv")
    text = (work / "pyproject.toml").read_text(encoding="utf-8")
    (work / "pyproject.toml").write_text(
        text.replace('"platformdirs>=4",', '"platformdirs>=4", "tomli-w>=1",'), encoding="utf-8"
    )
    p = subprocess.run([str(work / "scripts" / "lock"), "--check"], capture_output=True, text=True)
    assert p.returncode == 1 and "does not match pyproject.toml" in p.stderr, p.stderr


def test_every_set_is_locked_with_hashes_and_the_larger_sets_keep_the_smaller_ones_versions():
    app, export, every = pins("app.txt"), pins("export.txt"), pins("all.txt")
    assert app and len(app) < len(export) < len(every)
    for small, large in ((app, export), (export, every)):
        changed = {k: (v, large.get(k)) for k, v in small.items() if large.get(k) != v}
        assert not changed, f"a larger set changes versions: {changed}"
    names = {name for name, _ in app}
    assert {"openvino-genai", "pyside6-essentials", "huggingface-hub", "transformers"} <= names
    assert not names & {"torch", "optimum", "optimum-intel"}, "the run-time set brings torch"
    for name in ("app.txt", "export.txt", "all.txt"):
        text = (REQ / name).read_text(encoding="utf-8")
        blocks = re.split(r"\n(?=[A-Za-z0-9])", text.strip())
        assert all("--hash=sha256:" in b for b in blocks if "==" in b), name


def test_export_support_installs_the_locked_set():
    cmd = export_support.pip_command()
    assert cmd is not None and cmd[-2:] == ["-r", str(REQ / "export.txt")]
    assert "--require-hashes" in cmd
