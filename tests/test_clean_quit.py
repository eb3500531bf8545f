"""A clean quit, every time (issue 22). PySide6-Essentials 6.12.0 on Python < 3.12 drops a
reference to the return value of every Python slot it calls: a long session wears the counts
of None and the bools down to zero and the interpreter aborts at exit ("Fatal Python error:
none_dealloc" / "bool_dealloc"). pyproject.toml excludes that release; these tests catch a
return of the bug in whatever PySide6 the lock brings, and quit the real window many times."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Counts the references to None and False that 20,000 slot calls leave behind.
_SLOT_REFCOUNTS = r"""
import sys
from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QApplication

class Emitter(QObject):
    ping = Signal()

app = QApplication([])
e = Emitter()
e.ping.connect(lambda: None)
e.ping.connect(lambda: False)
before = sys.getrefcount(None), sys.getrefcount(False)
for _ in range(20_000):
    e.ping.emit()
after = sys.getrefcount(None), sys.getrefcount(False)
print(before[0] - after[0], before[1] - after[1])
"""

# The measured reproduction: a timer ticking into a lambda every 5 ms for 8 s, then exit.
_TIMER = r"""
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication
app = QApplication([])
ticks = []
t = QTimer(); t.timeout.connect(lambda: ticks.append(1)); t.start(5)
QTimer.singleShot(8000, app.quit)
app.exec()
print(len(ticks))
"""


def _offscreen() -> dict[str, str]:
    return {**os.environ, "QT_QPA_PLATFORM": "offscreen"}


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="None and the bools are immortal")
def test_slot_calls_leave_none_and_false_their_references():
    p = subprocess.run(
        [sys.executable, "-c", _SLOT_REFCOUNTS], capture_output=True, text=True, timeout=120,
        env=_offscreen(),
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    lost_none, lost_false = (int(x) for x in p.stdout.split())
    # A few come and go with the interpreter's own work; 6.12.0 loses one per call (20,000).
    assert abs(lost_none) < 100 and abs(lost_false) < 100, (lost_none, lost_false)


@pytest.mark.slow
def test_a_timer_ticking_into_python_for_8_s_exits_cleanly():
    p = subprocess.run(
        [sys.executable, "-c", _TIMER], capture_output=True, text=True, timeout=120,
        env=_offscreen(),
    )  # fmt: skip
    assert p.returncode == 0 and "Fatal Python error" not in p.stderr, p.stderr[-2000:]
    assert int(p.stdout) > 500  # it really ticked


@pytest.mark.slow
def test_quitting_the_window_after_a_stream_exits_0_every_time(tiny_models, tmp_path):
    """Load the tiny model, stream an answer, close the window (what Ctrl+Q does): 5 times,
    each in a process of its own."""
    exe = [sys.executable, "-m", "dolly_desktop.cli"]
    env = {**_offscreen(), "DOLLY_DESKTOP_HOME": str(tmp_path / "home")}
    for i in range(5):
        png = tmp_path / f"w{i}.png"
        p = subprocess.run(
            [*exe, "--model", str(tiny_models["INT4"]), "--screenshot", str(png)],
            capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
        assert p.returncode == 0, f"run {i}: exit {p.returncode}\n{p.stderr[-2000:]}"
        assert "Fatal Python error" not in p.stderr and png.is_file()
