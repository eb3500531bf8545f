"""PySide6.QtGui, replacing PyInstaller's hook: the same plugins minus those a desktop app
never loads. Filtering here, before PyInstaller's dependency analysis, also keeps out the
libraries only those plugins need (the GTK 3 theme alone drags in cairo, pango, atk,
gdk-pixbuf, ... but not libgtk itself, a mix that breaks on other distributions).

Kept platforms: xcb (X11), wayland, offscreen and minimal (headless runs, --screenshot).
Without the GTK 3 theme Qt uses its own style and the XDG desktop portal for file dialogs.
"""

from pathlib import PurePath

from PyInstaller.utils.hooks.qt import add_qt6_dependencies

hiddenimports, binaries, datas = add_qt6_dependencies(__file__)

UNUSED = (
    "egldeviceintegrations/",  # embedded (EGLFS) displays
    "generic/",  # evdev/tuio input for EGLFS and linuxfb
    "platforms/libqeglfs",
    "platforms/libqlinuxfb",
    "platforms/libqminimalegl",
    "platforms/libqvnc",
    "platforms/libqvkkhrdisplay",
    "platformthemes/libqgtk3",
)


def _used(src: str) -> bool:
    path = PurePath(src).as_posix()
    return not any(f"/plugins/{pattern}" in path for pattern in UNUSED)


binaries = [(src, dest) for src, dest in binaries if _used(src)]
