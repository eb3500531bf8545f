"""Ask your documents in the window (issue 24): pick a collection built from real files, the
best chunks fill Dolly's Input: slot within the budget, the numbered sources under the answer
open their files and show the exact text Dolly read, and the history keeps that text."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from PySide6.QtCore import QUrl
from PySide6.QtGui import QDesktopServices
from test_documents import write_corpus

from dolly_desktop.documents.index import DocIndex
from dolly_desktop.generation.prompt import build_prompt
from dolly_desktop.ui.documents import ask

QUESTION = "How often is the impeller replaced?"
PUMP = """# Pump care

## Impeller
The impeller of the bilge pump is replaced every third spring, before launch.

## Seals
Grease the shaft seals in autumn.
"""


@pytest.fixture
def window(tiny_window):
    tiny_window.greedy.setChecked(True)
    tiny_window.spins["max_new_tokens"].setValue(16)
    return tiny_window


def make_collection(qtbot, window, name: str, root: Path) -> None:
    pane = window.documents_pane
    with qtbot.waitSignal(pane.index_over, timeout=60_000):
        pane.add_folder(name, [str(root)])
    # Listed again after the index: with its files, and ticked.
    qtbot.waitUntil(lambda: name in pane.picked() and pane.infos[name].files > 0, timeout=10_000)


@pytest.fixture
def manuals(qtbot, window, tmp_path) -> Path:
    root = tmp_path / "manuals"
    write_corpus(root)  # .txt, .md, .html and a three-page .pdf
    (root / "pump.md").write_text(PUMP, encoding="utf-8")
    (root / "photo.bin").write_bytes(b"\0\1\2")
    make_collection(qtbot, window, "manuals", root)
    return root


def ask_and_wait(qtbot, window, question: str = QUESTION) -> None:
    window.instruction.setPlainText(question)
    with qtbot.waitSignal(window.response_done, timeout=60_000):
        window.submit()


def test_pick_a_collection_answer_and_open_a_source(qtbot, window, manuals, monkeypatch):
    pane = window.documents_pane
    assert pane.infos["manuals"].files == 5
    assert pane.progress.skipped_list.item(0).text() == "photo.bin: unsupported type (.bin)"
    assert "manuals" in pane.toggle.text()

    threads = []  # where the search ran: never on the GUI thread
    real = ask.find_passage

    def spy(*a, **k):
        threads.append(threading.current_thread())
        return real(*a, **k)

    monkeypatch.setattr("dolly_desktop.ui.main_window.find_passage", spy)
    opened: list[QUrl] = []  # the OS boundary: what the system viewer would be asked to open
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url) or True)

    ask_and_wait(qtbot, window)
    assert threads and threads[0] is not threading.main_thread()
    result = window.last_result
    assert result is not None and result.generated_tokens > 0
    assert window._response_text == result.text  # streamed into the response

    view = window.sources_view
    assert view.isVisible()
    first = view.records[0]
    assert (first["rel"], first["heading"]) == ("pump.md", "Impeller")
    assert "[1] pump.md, section “Impeller”" in view.toPlainText()
    (entry,) = window.history.list()
    # The prompt Dolly got is exactly the instruction and these chunks, in this order.
    passage = "\n\n".join(r["text"] for r in view.records)
    assert entry.context == passage and [s["text"] for s in entry.sources] == [
        r["text"] for r in view.records
    ]
    engine = window.worker.engine
    assert result.input_tokens == engine.count_tokens(build_prompt(QUESTION, passage))
    assert f"prompt {result.input_tokens} (passage " in window.context_pane.meter.text()

    view.anchorClicked.emit(QUrl("open:0"))
    assert opened == [QUrl.fromLocalFile(str(manuals / "pump.md"))]
    assert "every third spring" in view.toPlainText()
    view.anchorClicked.emit(QUrl("text:0"))
    assert 0 in view.expanded and "Grease the shaft seals" in view.toPlainText()

    pdf = [n for n, r in enumerate(view.records) if r["rel"] == "manual.pdf"]
    if pdf:  # a page is named with its file
        assert f"manual.pdf, page {view.records[pdf[0]]['page']}" in view.toPlainText()


def test_the_history_keeps_the_text_after_the_file_changes(qtbot, window, manuals):
    ask_and_wait(qtbot, window)
    (entry,) = window.history.list()
    used = entry.sources[0]["text"]
    assert "every third spring" in used
    (manuals / "pump.md").write_text("# Pump care\n\nThe pump was sold.\n", encoding="utf-8")
    with qtbot.waitSignal(window.documents_pane.index_over, timeout=60_000):
        window.documents_pane.update_index("manuals")
    with DocIndex() as ix:  # the index has moved on ...
        assert all("third" not in h.text for h in ix.search(["manuals"], "third spring", 5))

    window.clear()
    assert not window.sources_view.isVisible()
    (entry,) = window.history.list()  # ... the history has not: read back from the file
    window.show_entry(entry)
    view = window.sources_view
    assert view.isVisible() and view.records[0]["text"] == used
    assert "every third spring" in view.toPlainText()
    assert window.context_pane.text() == ""  # shown as its sources, not as a pasted passage
    assert window.documents_pane.picked() == ["manuals"]


def test_nothing_matches(qtbot, window, manuals):
    window.context_pane.set_text("A pasted passage.")  # and documents picked: refused
    window.instruction.setPlainText("zzqqx flurble")
    window.submit()
    assert not window.generating and "Dolly takes one passage" in window.error_text()
    window.context_pane.set_text("")
    ask_and_wait(qtbot, window, "zzqqx flurble")
    assert window.last_result is None and not window.generating
    assert "Nothing in manuals matches the instruction" in window.banner.text()
    assert window.banner.property("error") is False  # said, not an error
    assert window.history.list() == []  # nothing was asked of Dolly

    window.documents_pane.fallback.setChecked(True)
    ask_and_wait(qtbot, window, "zzqqx flurble")
    assert window.last_result is not None
    (entry,) = window.history.list()
    assert entry.sources == () and entry.context == ""
    assert "answered without a passage" in window.sources_view.toPlainText()


def test_the_passage_fits_the_budget(qtbot, window, tmp_path):
    """Many matching chunks and little room: the prompt plus max new tokens stays within the
    context, and the meter shows the prompt the model was given."""
    root = tmp_path / "long"
    root.mkdir()
    for i in range(12):
        words = " ".join(f"impeller{j} replaced wear{i}" for j in range(120))
        (root / f"part{i:02}.txt").write_text(f"Part {i}. {words}\n", encoding="utf-8")
    make_collection(qtbot, window, "long", root)
    engine = window.worker.engine
    n = engine.context_length
    base = engine.count_tokens(build_prompt(QUESTION))
    spin = window.spins["max_new_tokens"]
    spin.setValue(spin.maximum())  # room for a few chunks, not twelve
    max_new = int(spin.value())
    assert n - max_new - base < 12 * 256
    ask_and_wait(qtbot, window)
    result = window.last_result
    assert result is not None
    records = window.sources_view.records
    assert 1 <= len(records) < 12
    assert result.input_tokens + max_new <= n
    meter = window.context_pane.meter.text()
    assert meter.startswith(f"prompt {result.input_tokens} (passage ")
    assert f"{len(records)} chunk" in meter and f"= {result.input_tokens + max_new} of {n}" in meter


def test_a_cancelled_index_is_kept_and_can_be_carried_on(qtbot, window, tmp_path):
    root = tmp_path / "many"
    root.mkdir()
    total = 1500
    for i in range(total):
        text = f"Note {i}. The keeper of lamp {i} logs word{i} at dawn. " * 40
        (root / f"n{i:04}.txt").write_text(text, encoding="utf-8")
    pane = window.documents_pane
    job_seen = []

    def cancel_once(text: str, _fraction: float) -> None:
        if " of 1500 files" in text and not text.startswith("0 of") and not job_seen:
            job_seen.append(text)
            pane.progress.cancel_button.click()

    pane.add_folder("many", [str(root)])
    qtbot.waitUntil(lambda: pane.index_job is not None, timeout=30_000)
    pane.index_job.progress.connect(cancel_once)
    # Listed while its first index is made, and searchable as it grows.
    qtbot.waitUntil(lambda: pane.list.count() == 1, timeout=30_000)
    assert pane.list.item(0).text().startswith("many  —  indexing…")
    with qtbot.waitSignal(pane.index_over, timeout=120_000):
        pass
    assert "B/s · 0 skipped" in job_seen[0]
    assert "cancelled" in pane.progress.label.text()
    # Listed again once the run has ended: what it finished is there.
    qtbot.waitUntil(lambda: pane.infos["many"].files > 0, timeout=10_000)
    done = pane.infos["many"].files
    assert 0 < done < total
    with DocIndex() as ix:  # what was indexed can be searched
        assert ix.search(["many"], "word0", 1)[0].rel == "n0000.txt"
    with qtbot.waitSignal(pane.index_over, timeout=120_000):
        pane.update_index("many")
    qtbot.waitUntil(lambda: pane.infos["many"].files == total, timeout=10_000)


def test_a_file_added_while_the_app_runs_is_found(qtbot, window, manuals):
    """The collections are watched (documents.watch) while the window is open."""
    pane = window.documents_pane
    qtbot.waitUntil(lambda: pane._watching == ["manuals"], timeout=30_000)
    sails = "# Sails\n\nThe mainsail is rinsed in fresh water after each regatta.\n"
    (manuals / "sails.md").write_text(sails, encoding="utf-8")
    with qtbot.waitSignal(pane.updated, timeout=60_000):
        pass
    qtbot.waitUntil(lambda: pane.infos["manuals"].files == 6, timeout=10_000)
    assert "Updated from its folders: manuals: 1 file indexed" in pane.progress.label.text()
    ask_and_wait(qtbot, window, "When is the mainsail rinsed?")
    assert window.sources_view.records[0]["rel"] == "sails.md"
