"""The application icon, from resources/ in the source tree or in a PyInstaller bundle."""

from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtCore import QSize
from PySide6.QtGui import QIcon

ICON_NAME = "dolly-desktop"
ICON_SIZES = (32, 64, 128, 256)


def resources_dir() -> Path:
    """resources/ beside the package in a checkout; build.spec puts it at the bundle's top."""
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        return Path(bundle) / "resources"
    return Path(__file__).resolve().parents[2] / "resources"


def app_icon() -> QIcon:
    """The icon at every size shipped; an empty icon (Qt's default) if the files are missing."""
    icon = QIcon()
    for size in ICON_SIZES:
        png = resources_dir() / f"{ICON_NAME}-{size}.png"
        if png.is_file():
            icon.addFile(str(png), QSize(size, size))
    return icon
