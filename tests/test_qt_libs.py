"""The check that Qt's xcb plugin can load, before the window starts."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from dolly_desktop.ui import qt_libs

LDD = """\
\tlinux-vdso.so.1 (0x00007ffd)
\tlibQt6XcbQpa.so.6 => /x/PySide6/Qt/lib/libQt6XcbQpa.so.6 (0x7f)
\tlibxcb-icccm.so.4 => not found
\tlibxcb-keysyms.so.1 => not found
\tlibxcb-icccm.so.4 => not found
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x7f)
"""


def test_ldd_output_names_each_missing_library_once():
    assert qt_libs.parse_ldd(LDD) == ["libxcb-icccm.so.4", "libxcb-keysyms.so.1"]


def test_message_gives_the_one_apt_command(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/apt-get" if name else None)
    text = qt_libs.message(["libxcb-icccm.so.4", "libxcb-keysyms.so.1", "libxcb-cursor.so.0"])
    assert "libxcb-icccm.so.4, libxcb-keysyms.so.1, libxcb-cursor.so.0" in text
    assert "sudo apt install libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1" in text


def test_a_plugin_whose_dependencies_are_missing_is_caught(tmp_path):
    """The real plugin, copied away from the Qt libraries its RPATH ($ORIGIN) points at: the
    dynamic linker then cannot find them, exactly as with a missing system library."""
    plugin = qt_libs.xcb_plugin()
    if plugin is None or shutil.which("ldd") is None:
        pytest.skip("no PySide6 xcb plugin or no ldd on this system")
    moved = tmp_path / "libqxcb.so"
    shutil.copy(plugin, moved)
    missing = qt_libs.missing_libraries(moved)
    assert any(m.startswith("libQt6") for m in missing), missing
    problem = qt_libs.check(moved)
    assert problem is not None and "belong to PySide6 itself" in problem


def test_the_check_applies_only_where_qt_would_use_xcb():
    assert not qt_libs.needs_check({"QT_QPA_PLATFORM": "offscreen"})
    assert not qt_libs.needs_check({"WAYLAND_DISPLAY": "wayland-0"})
    assert qt_libs.needs_check({"QT_QPA_PLATFORM": "xcb", "DISPLAY": ":0"}) == (
        sys.platform.startswith("linux")
    )


def test_the_app_exits_2_with_the_message_when_libraries_are_missing(tmp_path):
    """Run the real entry point against a plugin path whose libraries cannot be found."""
    plugin = qt_libs.xcb_plugin()
    if plugin is None or shutil.which("ldd") is None:
        pytest.skip("no PySide6 xcb plugin or no ldd on this system")
    moved = tmp_path / "libqxcb.so"
    shutil.copy(plugin, moved)
    code = (
        "import sys; from pathlib import Path; from dolly_desktop.ui import qt_libs;"
        f"qt_libs.xcb_plugin = lambda: Path({str(moved)!r});"
        "from dolly_desktop.cli import main; sys.exit(main([]))"
    )
    env = {"PATH": "/usr/bin:/bin", "QT_QPA_PLATFORM": "xcb", "DISPLAY": ":99"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "the window cannot open" in p.stderr and "libQt6" in p.stderr
