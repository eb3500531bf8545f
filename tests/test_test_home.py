"""The suite's own app home (conftest): one per test process, and gone when the process ends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent


def _python(code: str, tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=TESTS.parent, capture_output=True, text=True,
        env={**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(TESTS)}, timeout=120,
    )


def test_the_home_is_removed_when_the_run_ends(tmp_path):
    code = (
        "import os, pathlib, conftest\n"
        "home = pathlib.Path(os.environ['DOLLY_DESKTOP_HOME'])\n"
        "(home / 'cache').mkdir(); (home / 'cache' / 'blob').write_bytes(b'x' * 1000)\n"
        "print(home)"
    )
    p = _python(code, tmp_path)
    assert p.returncode == 0, p.stderr
    home = Path(p.stdout.strip())
    assert home.parent == tmp_path  # made where this test looks, so its absence means something
    assert not home.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_second_import_under_another_name_is_refused(tmp_path):
    p = _python("import conftest\nimport tests.conftest", tmp_path)
    assert p.returncode != 0
    assert "import the test helpers as `conftest`, not `tests.conftest`" in p.stderr
