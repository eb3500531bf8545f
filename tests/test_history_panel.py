"""The History tab as a person scans it: a card per run (instruction on one line, time, model,
precision, badges), a sentence when a search finds nothing, export only of what is selected,
and a confirmation that names the file saved."""

from __future__ import annotations

import pytest
from PySide6.QtWidgets import QStyleOptionViewItem
from test_history import MODEL, PARAMS, record, result

from dolly_desktop.history.store import History
from dolly_desktop.ui.history_panel import BADGES_ROLE, META_ROLE, TITLE_ROLE, HistoryPanel

LONG = "Summarise this passage about llamas,\nwhich have lived in the Andes " + "for ages " * 40


@pytest.fixture
def history(own_home):
    h = History()  # in the test's own DOLLY_DESKTOP_HOME
    yield h
    h.close()


@pytest.fixture
def panel(qtbot, history):
    p = HistoryPanel(history)
    qtbot.addWidget(p)
    p.resize(320, 420)
    p.show()
    return p


def fill(h: History) -> None:
    """Oldest first: a plain run, one from a passage, one stopped, one failed, one from
    documents."""
    record(h, "Who is Dolly?", "A sheep.")
    with h.start_run(LONG, PARAMS, MODEL, "CPU", context="Llamas are camelids.") as run:
        run.finish(result("Llamas are camelids."))
    h.start_run("Write a long story", PARAMS, MODEL, "CPU").cancel()
    h.start_run("Who is Dolly?", PARAMS, MODEL, "GPU").fail("Out of memory")
    sources = [{"rel": "notes/a.pdf", "page": 2, "text": "x"}, {"rel": "b.md", "text": "y"}]
    h.start_run("What do my notes say?", PARAMS, MODEL, "CPU", sources=sources).cancel()


def cards(panel: HistoryPanel) -> list[dict]:
    out = []
    for row in range(panel.list.count()):
        item = panel.list.item(row)
        out.append(
            {
                "title": item.data(TITLE_ROLE),
                "meta": item.data(META_ROLE),
                "badges": [text for text, _kind in item.data(BADGES_ROLE)],
                "tip": item.toolTip(),
            }
        )
    return out


def test_cards_show_the_instruction_on_one_line_and_badges(panel, history):
    fill(history)
    panel.refresh()
    docs, failed, stopped, passage, plain = cards(panel)  # newest first
    assert plain["title"] == "Who is Dolly?" and plain["badges"] == []
    assert "dolly-v2-3b INT4" in plain["meta"]
    assert passage["badges"] == ["Passage"] and "\n" not in passage["title"]
    assert passage["title"].startswith("Summarise this passage about llamas, which have lived")
    assert stopped["badges"] == ["Stopped"] and "stopped this run" in stopped["tip"]
    assert failed["badges"] == ["Failed"] and "Out of memory" in failed["tip"]
    assert docs["badges"] == ["2 documents", "Stopped"] and "notes/a.pdf" in docs["tip"]
    # The painted title is elided to the card's width, on one line.
    option = QStyleOptionViewItem()
    option.initFrom(panel.list)
    option.rect = panel.list.visualItemRect(panel.list.item(3))
    shown = panel.delegate.elided_title(option, panel.list.model().index(3, 0))
    assert shown.endswith("…") and len(shown) < 60 and "\n" not in shown
    # A card per run, all one height, with a separator painted at its foot.
    rects = [panel.list.visualItemRect(panel.list.item(r)) for r in range(5)]
    assert len({r.height() for r in rects}) == 1
    assert rects[0].height() > 2 * panel.fontMetrics().height()
    image = panel.list.viewport().grab().toImage()
    background = image.pixelColor(rects[0].center().x(), rects[0].bottom() - 2)
    lines = {image.pixelColor(r.center().x(), r.bottom()).name() for r in rects}
    assert len(lines) == 1 and lines != {background.name()}


def test_a_search_that_finds_nothing_says_so(panel, history):
    record(history, "Who is Dolly?", "A sheep.")
    panel.search.setText("zebra")
    panel.refresh()
    assert panel.list.count() == 0
    assert panel.list_stack.currentWidget() is panel.empty_label
    assert panel.empty_label.isVisible() and panel.empty_label.text() == "No runs match 'zebra'"
    panel.search.setText("Dolly")
    panel.refresh()
    assert panel.list.count() == 1 and panel.list.isVisible()
    assert not panel.empty_label.isVisible()


def test_this_entry_export_needs_a_selection(panel, history):
    record(history, "Who is Dolly?", "A sheep.")
    panel.refresh()
    labels = {a.text(): a for a in panel.export_button.menu().actions()}
    this = [a for text, a in labels.items() if text.startswith("This entry")]
    every = [a for text, a in labels.items() if text.startswith("All")]
    assert len(this) == 2 and len(every) == 2
    assert panel.list.currentItem() is None
    assert not any(a.isEnabled() for a in this) and all(a.isEnabled() for a in every)
    panel.list.setCurrentRow(0)
    assert all(a.isEnabled() for a in this)
    panel.delete_current(confirm=False)
    assert not any(a.isEnabled() for a in this)


def test_saving_an_export_confirms_with_the_file_name(panel, history, tmp_path):
    record(history, "Who is Dolly?", "A sheep.")
    record(history, "Name a llama", "Larry.")
    panel.refresh()
    panel.list.setCurrentRow(0)
    path = tmp_path / "one entry.md"
    assert panel.export("md", True, str(path)) == 1
    assert "Name a llama" in path.read_text(encoding="utf-8")
    assert panel.done_label.isVisible() and not panel.done_label.property("error")
    assert panel.done_label.text() == f"Exported 1 entry to {path}"
    every = tmp_path / "all.jsonl"
    assert panel.export("jsonl", False, str(every)) == 2
    assert panel.done_label.text() == f"Exported 2 entries to {every}"
    nowhere = tmp_path / "no such folder" / "x.md"
    assert panel.export("md", False, str(nowhere)) == 0
    assert panel.done_label.property("error") and str(nowhere) in panel.done_label.text()
