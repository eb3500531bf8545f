"""Can Qt open a window here? On Linux, Qt's xcb platform plugin needs system libraries that a
minimal desktop may lack, and Qt's own message names only one of them. This asks `ldd` before
Qt is imported and names every missing library with the one command that installs them.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

EXIT_MISSING = 2
# Qt opens this one with dlopen at run time (Qt 6.5+), so ldd on the plugin cannot see it.
DLOPENED = ("libxcb-cursor.so.0",)
# Debian/Ubuntu package of each library Qt's xcb plugin needs from the system.
APT_PACKAGES = {
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-render.so.0": "libxcb-render0",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-xinerama.so.0": "libxcb-xinerama0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxcb.so.1": "libxcb1",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libX11.so.6": "libx11-6",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libxkbcommon.so.0": "libxkbcommon0",
    "libEGL.so.1": "libegl1",
    "libGL.so.1": "libgl1",
    "libOpenGL.so.0": "libopengl0",
    "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6",
    "libdbus-1.so.3": "libdbus-1-3",
    "libglib-2.0.so.0": "libglib2.0-0",
    "libSM.so.6": "libsm6",
    "libICE.so.6": "libice6",
}
# Every library above, as README.md lists them for a fresh Debian/Ubuntu desktop.
ALL_APT = sorted(set(APT_PACKAGES.values()))


def xcb_plugin() -> Path | None:
    """Where PySide6's xcb plugin is, found without importing Qt."""
    spec = importlib.util.find_spec("PySide6")
    if spec is None or not spec.submodule_search_locations:
        return None
    plugin = Path(next(iter(spec.submodule_search_locations))) / "Qt/plugins/platforms/libqxcb.so"
    return plugin if plugin.exists() else None


def missing_libraries(plugin: Path) -> list[str]:
    """Libraries `plugin` needs that the dynamic linker cannot find, then those Qt opens later."""
    out = subprocess.run(["ldd", str(plugin)], capture_output=True, text=True).stdout
    missing = parse_ldd(out)
    for lib in DLOPENED:
        if lib not in missing and not _findable(lib):
            missing.append(lib)
    return missing


def parse_ldd(output: str) -> list[str]:
    missing: list[str] = []
    for line in output.splitlines():
        name, _, where = line.strip().partition(" => ")
        if where.strip() == "not found" and name not in missing:
            missing.append(name)
    return missing


def _findable(lib: str) -> bool:
    try:
        ctypes.CDLL(lib)  # what Qt's dlopen will do; a system library, harmless to load
    except OSError:
        return False
    return True


def install_command(missing: list[str]) -> str:
    """The one command that installs them, for the package manager this system has."""
    if shutil.which("apt-get") or not shutil.which("dnf"):
        packages = sorted({APT_PACKAGES[m] for m in missing if m in APT_PACKAGES})
        return f"sudo apt install {' '.join(packages)}" if packages else ""
    return "sudo dnf install " + " ".join(f"'*/{m}'" for m in missing)  # dnf finds by file


def message(missing: list[str]) -> str:
    unknown = [m for m in missing if m not in APT_PACKAGES]
    lines = [
        "dolly-desktop: the window cannot open: Qt's X11 (xcb) platform plugin needs "
        f"{', '.join(missing)}, which this system does not have."
    ]
    command = install_command(missing)
    if command:
        lines.append(f"Install them with:  {command}")
    if unknown:
        lines.append(
            f"{', '.join(unknown)} belong to PySide6 itself: reinstall it (delete .venv and "
            "run ./run-app again)."
        )
    lines.append("The terminal commands (dolly-desktop generate, serve, models) work without.")
    return "\n".join(lines)


def needs_check(env: dict[str, str] | None = None) -> bool:
    """Only when Qt would use xcb: Linux, not frozen (the bundle carries its own), no other
    platform asked for, and not a Wayland session (Qt then uses its Wayland plugin)."""
    env = dict(os.environ) if env is None else env
    platform = env.get("QT_QPA_PLATFORM", "")
    return (
        sys.platform.startswith("linux")
        and not getattr(sys, "frozen", False)
        and platform in ("", "xcb")
        and not (platform == "" and env.get("WAYLAND_DISPLAY"))
    )


NO_DISPLAY = (
    "dolly-desktop: no display to open the window on (DISPLAY, WAYLAND_DISPLAY and "
    "QT_QPA_PLATFORM are unset); without one, use the terminal commands: "
    "dolly-desktop generate, serve, models."
)


def no_display(env: dict[str, str] | None = None) -> str | None:
    """The one line for a Linux session with no display, where Qt would abort naming a
    library instead (its xcb plugin fails to connect and blames libxcb-cursor)."""
    env = dict(os.environ) if env is None else env
    if not sys.platform.startswith("linux"):
        return None
    if any(env.get(k) for k in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")):
        return None
    return NO_DISPLAY


def check(plugin: Path | None = None) -> str | None:
    """None when the window can open (or the check does not apply), else the message."""
    if plugin is None:
        if (problem := no_display()) is not None:
            return problem
        if not needs_check():
            return None
        plugin = xcb_plugin()
        if plugin is None or shutil.which("ldd") is None:
            return None  # nothing to ask: let Qt try and say what it says
    missing = missing_libraries(plugin)
    return message(missing) if missing else None


def main() -> int:
    problem = check()
    if problem:
        print(problem, file=sys.stderr)
        return EXIT_MISSING
    return 0


if __name__ == "__main__":
    sys.exit(main())
