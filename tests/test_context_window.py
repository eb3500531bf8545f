"""The window's Context pane: the passage reaches Dolly and the history, the token meter counts
with the model's own tokenizer off the GUI thread, and a prompt that does not fit is refused."""

from __future__ import annotations

import pytest

from dolly_desktop.generation.prompt import build_prompt

PASSAGE = "The lighthouse at Pharos was finished around 280 BC on an island off Alexandria."
QUESTION = "Where was the lighthouse?"


@pytest.fixture
def window(tiny_window):
    return tiny_window


def test_context_reaches_dolly_and_the_meter_counts_it(qtbot, window, tmp_path):
    pane = window.context_pane
    assert not pane.body.isVisible()  # collapsed until wanted
    window.instruction.setPlainText(QUESTION)
    pane.set_text(PASSAGE)
    assert pane.body.isVisible()
    n = window.worker.engine.count_tokens(build_prompt(QUESTION, PASSAGE))
    max_new = int(window.spins["max_new_tokens"].value())
    want = f"prompt {n} + up to {max_new} new = {n + max_new} of 2048"
    qtbot.waitUntil(lambda: pane.meter.text() == want, timeout=10_000)
    qtbot.wait(100)  # the layout settles before the picture
    window.grab().save(str(tmp_path / "context-within.png"))

    window.greedy.setChecked(True)
    with qtbot.waitSignal(window.response_done, timeout=60_000):
        window.submit()
    assert window.last_result is not None and window.last_result.input_tokens == n
    (entry,) = window.history.list(query="Alexandria")  # found by a word of the passage
    assert entry.context == PASSAGE and entry.instruction == QUESTION


def test_a_prompt_that_does_not_fit_is_refused(qtbot, window, tmp_path):
    pane = window.context_pane
    window.instruction.setPlainText(QUESTION)
    pane.set_text("All work and no play makes Jack a dull boy. " * 250)  # ~3000 tokens
    qtbot.waitUntil(lambda: "does not fit" in pane.meter.text(), timeout=10_000)
    assert not pane.fits and not window.submit_button.isEnabled()
    assert "b00020" in pane.meter.styleSheet()  # shown in red
    qtbot.wait(100)
    window.grab().save(str(tmp_path / "context-over.png"))
    window.submit()  # a shortcut that goes around the button is refused too
    assert not window.generating and "does not fit" in window.error_text()

    pane.set_text(PASSAGE)
    qtbot.waitUntil(lambda: pane.fits and window.submit_button.isEnabled(), timeout=10_000)


def test_a_file_that_is_not_utf8_text_leaves_the_context_as_it_was(window, tmp_path):
    pane = window.context_pane
    pane.set_text(PASSAGE)
    binary = tmp_path / "photo.txt"
    binary.write_bytes(b"\xff\xd8\xff\xe0\0\x10JFIF\0")
    pane.load_file(str(binary))
    assert pane.text() == PASSAGE and "not a text file" in pane.message.text()
    good = tmp_path / "notes.md"
    good.write_text("# Notes\nThe keeper lit the lamp at dusk.", encoding="utf-8")
    pane.load_file(str(good))
    assert pane.text().startswith("# Notes") and pane.message.text() == ""


def test_the_meter_never_widens_the_window(qtbot, window):
    """At 800 px, the longest red sentence wraps inside the window instead of widening it."""
    window.resize(800, 600)
    qtbot.wait(50)
    assert window.width() == 800
    pane = window.context_pane
    pane._show_count(2100, 1000, 2048)  # does not fit: the longest sentence
    qtbot.wait(50)
    assert "does not fit" in pane.meter.text()
    assert window.width() == 800
    assert pane.meter.geometry().right() <= pane.width()
    pane._show_count(1500, 1000, 2048)
    qtbot.wait(50)
    assert window.width() == 800
    # All of it can be read: the label is tall enough for its wrapped lines.
    needed = pane.meter.heightForWidth(pane.meter.width())
    assert pane.meter.height() >= needed > 0
