"""Render resources/dolly-desktop.svg to the PNG sizes the app and the bundle use.

Run after editing the SVG:  .venv/bin/python packaging/make_icon.py
The PNGs are committed, so neither the app nor the bundle needs the Qt SVG module.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication, QImage, QPainter
from PySide6.QtSvg import QSvgRenderer

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
SIZES = (256, 128, 64, 32)


def main() -> int:
    app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])  # noqa: F841
    renderer = QSvgRenderer(str(RESOURCES / "dolly-desktop.svg"))
    if not renderer.isValid():
        print("the SVG could not be read", file=sys.stderr)
        return 1
    for size in SIZES:
        image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
        image.fill(Qt.GlobalColor.transparent)
        painter = QPainter(image)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        renderer.render(painter)
        painter.end()
        out = RESOURCES / f"dolly-desktop-{size}.png"
        if not image.save(str(out)):
            print(f"could not write {out}", file=sys.stderr)
            return 1
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
