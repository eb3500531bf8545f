"""The window as a person finds it, at 800x600 and 1400x900 (pytest-qt, a real window): what
the screenshots under Xvfb showed wrong, each kept from coming back (issue 26)."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QPoint, QRect, Qt
from PySide6.QtWidgets import QBoxLayout

from dolly_desktop.models.store import Store
from dolly_desktop.ui.compare.view import CompareWindow
from dolly_desktop.ui.main_window import ITEM_MARGIN, ITEM_PAD, METER_MIN_TEXT, MainWindow


@pytest.fixture(autouse=True)
def own_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DOLLY_DESKTOP_HOME", str(tmp_path / "home"))  # no model installed


def _window(qtbot, width: int, height: int) -> MainWindow:
    w = MainWindow()
    qtbot.addWidget(w)
    w.show()
    qtbot.waitExposed(w)
    w.resize(width, height)
    qtbot.wait(100)  # the layout settles
    return w


def _inside(w: MainWindow, widget) -> bool:
    top_left = widget.mapTo(w, QPoint(0, 0))
    return w.rect().contains(QRect(top_left, widget.size()))


def test_the_first_run_window_holds_800x600(qtbot):
    """The welcome panel above the examples, history and parameters: the side column scrolls
    rather than stretch the window to 662 px."""
    w = _window(qtbot, 800, 600)
    assert w.first_run.isVisible()
    assert (w.width(), w.height()) == (800, 600)
    for widget in (w.first_run, w.instruction, w.submit_button, w.response, w.side):
        assert _inside(w, widget), widget.objectName() or type(widget).__name__
    w.close()


def test_an_open_documents_pane_leaves_the_meter_readable_at_800(qtbot):
    """Beside the open Documents pane, the token meter had 25 px: a word per line."""
    w = _window(qtbot, 800, 600)
    w.documents_pane.toggle.setChecked(True)
    readable = w.fontMetrics().horizontalAdvance(METER_MIN_TEXT)
    qtbot.waitUntil(lambda: w.context_pane.meter.width() >= readable, timeout=5_000)
    assert w.passages_row.direction() == QBoxLayout.Direction.TopToBottom
    assert _inside(w, w.documents_pane.add_button) and w.width() == 800
    w.close()


def test_a_wide_window_keeps_the_panes_side_by_side_and_aligned(qtbot):
    w = _window(qtbot, 1400, 900)
    w.documents_pane.toggle.setChecked(True)
    qtbot.wait(50)
    assert w.passages_row.direction() == QBoxLayout.Direction.LeftToRight
    readable = w.fontMetrics().horizontalAdvance(METER_MIN_TEXT)
    assert w.context_pane.meter.width() >= readable, w.context_pane.meter.width()
    ctx = w.context_pane.toggle.mapTo(w.passages, QPoint(0, 0)).y()
    docs = w.documents_pane.toggle.mapTo(w.passages, QPoint(0, 0)).y()
    assert abs(ctx - docs) <= 4, (ctx, docs)  # the collapsed Context line stays at the top
    w.close()


def test_every_example_has_room_for_its_wrapped_lines(qtbot):
    w = _window(qtbot, 800, 600)
    w.side_tabs.setCurrentWidget(w.examples)
    ex = w.examples
    fm = ex.fontMetrics()
    for i in range(ex.count()):
        item = ex.item(i)
        rect = ex.visualItemRect(item)
        text = fm.boundingRect(QRect(0, 0, rect.width() - 2 * ITEM_MARGIN, 10_000),
                               Qt.TextFlag.TextWordWrap, item.text())  # fmt: skip
        assert rect.height() >= text.height() + ITEM_PAD - 1, (item.text(), rect, text)
    w.close()


def test_each_shortcut_is_listed_once_with_room_after_the_key(qtbot):
    w = MainWindow()
    qtbot.addWidget(w)
    keys = [k for k, _what in w.shortcuts()]
    assert len(keys) == len(set(keys)) and "Ctrl++" not in keys, keys
    assert [what for k, what in w.shortcuts() if k == "Ctrl+="] == ["Zoom in"]
    w.close()


def test_the_compare_window_fits_the_screen_and_speaks_of_ticking(qtbot):
    view = CompareWindow(store=Store())
    qtbot.addWidget(view)
    view.show()
    room = view.screen().availableGeometry()
    assert view.width() <= room.width() and view.height() <= room.height()
    assert "--" not in view.plan.text()  # no command-line flags in the window
    assert "Tick two or three" in view.plan.text()
    view.close()


def test_the_history_export_button_has_room_for_its_arrow(qtbot):
    w = _window(qtbot, 800, 600)
    w.side_tabs.setCurrentWidget(w.history_panel)
    qtbot.wait(50)
    export, rerun = w.history_panel.export_button, w.history_panel.rerun_button
    assert export.height() == rerun.height()  # one row of like buttons
    text = export.fontMetrics().horizontalAdvance(export.text())
    assert export.width() >= text + 2 * export.fontMetrics().height(), export.width()
    w.close()


def test_a_disabled_check_box_is_greyed_in_dark(qtbot):
    """The dark palette greys a disabled check box's text (Fixed seed, with Greedy on)."""
    from PySide6.QtWidgets import QApplication, QCheckBox

    from dolly_desktop.ui.look import dark_palette

    def brightest(enabled: bool) -> int:
        box = QCheckBox("Fixed seed")
        qtbot.addWidget(box)
        box.setStyle(QApplication.style())
        box.setPalette(dark_palette())
        box.setEnabled(enabled)
        image = box.grab().toImage()
        return max(
            image.pixelColor(x, y).lightness()
            for x in range(box.width() // 3, box.width())  # the text, right of the box
            for y in range(image.height())
        )

    assert brightest(True) >= 200
    assert brightest(False) <= 160
