"""Look and feel people expect: the system's light or dark scheme, zoomable text, and an
accessible name on every control (what a screen reader says for it)."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import (
    QAbstractButton,
    QAbstractSpinBox,
    QApplication,
    QComboBox,
    QFormLayout,
    QLabel,
    QWidget,
)

ZOOM_STEP = 1  # points per Ctrl+= / Ctrl+-
ZOOM_RANGE = (-6, 16)

# The app's one error look: a light red box with dark text, readable in either scheme (the
# window's banner, the first-run panel, the settings dialog's messages).
ERROR_STYLE = (
    "QLabel { padding: 8px; border-radius: 4px; background: #fde7e9; color: #1d1d1f; "
    "border: 1px solid #b00020; }"
)
NOTE_STYLE = "QLabel { padding: 8px; border-radius: 4px; background: #eef3fb; color: #1d1d1f; }"


def style_message(label: QLabel, error: bool) -> None:
    """Show `label` in the error look (or the neutral note look); its `error` property says
    which, for tests and style sheets."""
    label.setProperty("error", error)
    label.setStyleSheet(ERROR_STYLE if error else NOTE_STYLE)


def dark_palette() -> QPalette:
    """Fusion's colours for a dark scheme (Fusion itself turns dark only on some platforms)."""
    p = QPalette()
    window, base, text = QColor(45, 45, 48), QColor(30, 30, 32), QColor(230, 230, 230)
    for role, color in (
        (QPalette.ColorRole.Window, window),
        (QPalette.ColorRole.WindowText, text),
        (QPalette.ColorRole.Base, base),
        (QPalette.ColorRole.AlternateBase, window),
        (QPalette.ColorRole.ToolTipBase, base),
        (QPalette.ColorRole.ToolTipText, text),
        (QPalette.ColorRole.Text, text),
        (QPalette.ColorRole.Button, window),
        (QPalette.ColorRole.ButtonText, text),
        (QPalette.ColorRole.BrightText, QColor(255, 90, 90)),
        (QPalette.ColorRole.Link, QColor(120, 170, 255)),
        (QPalette.ColorRole.Highlight, QColor(60, 110, 200)),
        (QPalette.ColorRole.HighlightedText, QColor(255, 255, 255)),
        (QPalette.ColorRole.PlaceholderText, QColor(150, 150, 150)),
    ):
        p.setColor(role, color)
    # WindowText too: a check box's or a label's text (the disabled "Fixed seed" stayed white)
    for role in (
        QPalette.ColorRole.Text,
        QPalette.ColorRole.ButtonText,
        QPalette.ColorRole.WindowText,
    ):
        p.setColor(QPalette.ColorGroup.Disabled, role, QColor(120, 120, 120))
    return p


def follow_color_scheme(app: QApplication) -> None:
    """Apply the system's scheme now and whenever the desktop says it changed."""

    def apply(scheme: Qt.ColorScheme) -> None:
        dark = scheme == Qt.ColorScheme.Dark
        app.setPalette(dark_palette() if dark else app.style().standardPalette())

    app.setStyle("Fusion")  # one style that honours the palette on every platform
    apply(app.styleHints().colorScheme())
    app.styleHints().colorSchemeChanged.connect(apply)


def name_controls(root: QWidget) -> None:
    """Give every control without a name the text of its form label (spin boxes, combo boxes
    have none of their own), so a screen reader says "Temperature", not "spin box"."""
    for form in root.findChildren(QFormLayout):
        for row in range(form.rowCount()):
            label = form.itemAt(row, QFormLayout.ItemRole.LabelRole)
            field = form.itemAt(row, QFormLayout.ItemRole.FieldRole)
            if label is None or field is None:
                continue
            lw, fw = label.widget(), field.widget()
            if isinstance(lw, QLabel) and fw is not None and not fw.accessibleName():
                fw.setAccessibleName(lw.text().replace("&", ""))
            if isinstance(lw, QAbstractButton) and fw is not None and not fw.accessibleName():
                fw.setAccessibleName(lw.text().replace("&", ""))


CONTROLS = (QAbstractButton, QAbstractSpinBox, QComboBox)
