"""Look and feel: the system's dark scheme, zoom kept between runs, a name for every control,
and the shortcuts listed under Help. With a real window (offscreen)."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QAccessible, QPalette
from PySide6.QtWidgets import QAbstractSpinBox, QApplication, QComboBox, QWidget

from dolly_desktop.ui.app import make_app
from dolly_desktop.ui.look import CONTROLS
from dolly_desktop.ui.main_window import MainWindow


@pytest.fixture(autouse=True)
def own_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DOLLY_DESKTOP_HOME", str(tmp_path / "home"))


def test_the_window_follows_a_dark_system_scheme(qtbot, tmp_path):
    """The desktop announces a scheme change through this signal (the offscreen platform used
    in tests has no scheme of its own to switch, so the test sends what a desktop sends)."""
    app = make_app()
    hints = app.styleHints()
    w = MainWindow()
    qtbot.addWidget(w)
    w.show()
    hints.colorSchemeChanged.emit(Qt.ColorScheme.Dark)
    qtbot.wait(50)
    w.grab().save(str(tmp_path / "dark.png"))
    assert app.palette().color(QPalette.ColorRole.Window).lightness() < 80
    assert w.response.palette().color(QPalette.ColorRole.Base).lightness() < 80
    assert w.response.palette().color(QPalette.ColorRole.Text).lightness() > 180
    hints.colorSchemeChanged.emit(Qt.ColorScheme.Light)
    qtbot.wait(50)
    assert app.palette().color(QPalette.ColorRole.Window).lightness() > 150
    w.close()


def test_zoom_changes_the_text_and_is_kept(qtbot):
    w = MainWindow()
    qtbot.addWidget(w)
    normal = w.text_point_size()
    w.zoom_in_action.trigger()
    w.zoom_in_action.trigger()
    assert w.text_point_size() == normal + 2
    assert w.instruction.font().pointSizeF() == normal + 2
    assert w.context_pane.edit.font().pointSizeF() == normal + 2
    w.close()
    again = MainWindow()  # a new run
    qtbot.addWidget(again)
    assert again.text_point_size() == normal + 2
    again.zoom_out_action.trigger()
    assert again.text_point_size() == normal + 1
    again.zoom_reset_action.trigger()
    assert again.text_point_size() == normal
    again.close()


def _controls(root: QWidget) -> list[QWidget]:
    """What a person can reach with Tab, less the editors inside spin and combo boxes (the
    box itself carries the name)."""
    out = []
    for w in root.findChildren(QWidget):
        inner = isinstance(w.parent(), QAbstractSpinBox | QComboBox)
        reachable = isinstance(w, CONTROLS) or bool(w.focusPolicy() & Qt.FocusPolicy.TabFocus)
        if reachable and not inner and w.isVisibleTo(root):
            out.append(w)
    return out


def test_every_control_has_a_name_a_screen_reader_can_say(qtbot):
    w = MainWindow()
    qtbot.addWidget(w)
    w.show()
    w.context_pane.set_open(True)
    dialog = w.open_settings()
    unnamed = []
    for root in (w, dialog):
        for c in _controls(root):
            face = QAccessible.queryAccessibleInterface(c)
            name = face.text(QAccessible.Text.Name) if face is not None else ""
            if not name.strip():
                unnamed.append(f"{type(c).__name__} {c.objectName()!r}")
    assert unnamed == [], unnamed
    w.close()


def test_shortcuts_are_listed_under_help(qtbot):
    w = MainWindow()
    qtbot.addWidget(w)
    listed = dict(w.shortcuts())
    assert listed["Ctrl+Enter"].startswith("Submit") and listed["Esc"].startswith("Stop")
    assert listed["Ctrl+0"] == "Actual size" and listed["Ctrl+="] == "Zoom in"
    assert "Quit" in listed.values() and "Model settings…" in listed.values()
    assert QApplication.instance() is not None
    w.close()


def test_zoom_scales_every_widget_not_only_the_text_boxes(qtbot):
    w = MainWindow()
    qtbot.addWidget(w)
    w.show()
    widgets = {
        "history": w.history_panel,
        "examples": w.examples,
        "temperature": w.spins["temperature"],
        "greedy": w.greedy,
        "submit": w.submit_button,
        "status bar": w.statusBar(),
        "stats": w.stats_label,
        "model label": w.model_label,
        "tabs": w.side_tabs,
        "menu bar": w.menuBar(),
        "first run": w.first_run.download_button,
        "response": w.response,
    }
    normal = {name: x.font().pointSizeF() for name, x in widgets.items()}
    w.zoom_in_action.trigger()
    w.zoom_in_action.trigger()
    w.zoom_in_action.trigger()
    bigger = {name: x.font().pointSizeF() for name, x in widgets.items()}
    assert bigger == {name: size + 3 for name, size in normal.items()}
    w.zoom_reset_action.trigger()
    assert {name: x.font().pointSizeF() for name, x in widgets.items()} == normal
    w.close()
