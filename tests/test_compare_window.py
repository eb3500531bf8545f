"""The Compare window with pytest-qt on the tiny model's FP16, INT8 and INT4 in a store of their
own: columns stream, metrics and agreement appear, Cancel stops every model, blind A/B hides the
names until the vote and the tally counts it."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest
from conftest import copy_model
from PySide6.QtWidgets import QLabel, QWidget

from dolly_desktop.compare.agreement import Prompt, Tokens, measure
from dolly_desktop.compare.votes import tally
from dolly_desktop.generation.engines.local import Engine
from dolly_desktop.generation.prompt import build_prompt
from dolly_desktop.models.store import Store
from dolly_desktop.ui.compare import CompareWindow
from dolly_desktop.ui.compare.column import HIDDEN
from dolly_desktop.ui.compare.view import FAIR

NAME = "dolly-v2-tiny"
INT4, INT8, FP16 = (f"{NAME}/{p}" for p in ("INT4", "INT8", "FP16"))
MS = 180_000
INSTRUCTION = "Who is Dolly?"


@pytest.fixture(scope="module")
def store(tiny_models, tmp_path_factory) -> Store:
    store = Store(tmp_path_factory.mktemp("store") / "models")
    for precision, folder in tiny_models.items():
        copy_model(folder, store.path_for(NAME, precision))
    return store


class Counted(Engine):
    """The app's engine, counted: which are in memory now."""

    alive: ClassVar[list[Path]] = []
    most: ClassVar[list[int]] = []  # how many were in memory as each one loaded

    def __init__(self, path: Path) -> None:
        super().__init__(path, "CPU")
        Counted.alive.append(self.model_dir)
        Counted.most.append(len(Counted.alive))

    def close(self) -> None:
        Counted.alive.remove(self.model_dir)
        super().close()


@pytest.fixture
def view(qtbot, store, tmp_path):
    w = CompareWindow(
        None, INSTRUCTION, store=store, votes_file=tmp_path / "votes.json", make_engine=Counted
    )
    qtbot.addWidget(w)
    w.show()
    yield w
    w.close()


def _run(qtbot, view: CompareWindow) -> None:
    with qtbot.waitSignal(view.run_ended, timeout=MS):
        view.run_button.click()
        assert view.cancel_button.isEnabled() and not view.run_button.isEnabled()


def test_two_columns_stream_with_metrics_and_agreement_with_fp16(qtbot, view, store):
    """INT4 and INT8 side by side while FP16 is installed: FP16 is the reference (as `models
    check` chooses), measured though it is not a column."""
    view.pick([INT4, INT8])
    plan = view.plan.text()
    assert "Loading all 2 at once" in plan and FAIR in plan, plan
    assert f"against {FP16} (installed, not one of these)" in plan
    view.max_new.setValue(24)
    _run(qtbot, view)
    assert view.result is not None and view.message.isHidden()
    cols = view.columns[:2]
    assert view.columns[2].isHidden() and {c.label for c in cols} == {INT4, INT8}
    for col in cols:
        o = col.outcome
        assert o is not None and o.tokens > 0
        assert view.relay.pieces[col.label] > 1  # streamed, piece by piece
        assert col.text.toPlainText() == o.text
        assert col.title.text() == col.label
        m = col.metrics.text()
        assert "tok/s" in m and "first token" in m and "peak memory" in m, m
        assert f"{o.agreement.top1:.0%} of tokens as FP16" in col.agreement.text()
    assert Counted.alive == []
    # The figure is FP16's, measured the way `models check` measures it.
    fp16, int8 = store.path_for(NAME, "FP16"), store.path_for(NAME, "INT8")
    tokens = Tokens(fp16)
    ids = tokens.encode(build_prompt(INSTRUCTION, ""))
    (direct,) = measure(fp16, [int8], [Prompt(ids)], 24, stops=tokens.stops)
    assert cols[1].outcome.agreement == direct.overall


def test_the_reference_column_says_so(qtbot, view):
    view.pick([INT4, FP16])
    assert f"against {FP16}." in view.plan.text()
    view.max_new.setValue(8)
    _run(qtbot, view)
    int4, fp16 = view.column_of(INT4), view.column_of(FP16)
    assert fp16.agreement.text().startswith("The reference")
    assert "of tokens as FP16" in int4.agreement.text()


def test_cancel_stops_every_model(qtbot, view):
    view.pick([INT4, INT8])
    view.max_new.setValue(1000)
    view.instruction.setPlainText("Write a long story about a lighthouse keeper and his cat.")
    view.run_button.click()
    first, second = view.columns[:2]
    qtbot.waitUntil(lambda: first.text.toPlainText() != "", timeout=MS)
    with qtbot.waitSignal(view.run_ended, timeout=MS):
        view.cancel_button.click()
    assert first.outcome is not None and first.outcome.stop == "cancelled"
    assert first.outcome.tokens < 1000 and first.state.text() == "Stopped."
    assert second.outcome is None and second.text.toPlainText() == ""
    assert second.state.text() == "Stopped before it answered."
    assert view.result is None and "Stopped" in view.status.text()
    assert Counted.alive == []  # both engines freed
    assert view.run_button.isEnabled() and not view.cancel_button.isEnabled()


def _column_texts(view: CompareWindow) -> str:
    parts = [view.status.text()]
    for col in view.columns:
        parts += [col.toolTip(), col.accessibleName(), col.title.toolTip()]
        parts += [w.text() for w in col.findChildren(QLabel)]
    return "\n".join(parts)


def test_blind_hides_the_names_until_the_vote_and_the_tally_counts_it(qtbot, view, tmp_path):
    view.pick([INT4, INT8])
    view.blind.setChecked(True)
    view.max_new.setValue(16)
    _run(qtbot, view)
    shown = _column_texts(view)
    assert "INT4" not in shown and "INT8" not in shown, shown
    assert [c.title.text() for c in view.columns[:2]] == ["A", "B"]
    assert all(c.metrics.text() == HIDDEN for c in view.columns[:2])
    assert view.vote_row.isVisible() and not view.vote_buttons[2].isVisible()
    assert view.tally.text() == ""
    # Vote for INT8, wherever it landed.
    b = view.columns.index(view.column_of(INT8))
    with qtbot.waitSignal(view.voted):
        view.vote_buttons[b].click()
    assert not view.vote_row.isVisible()
    for col in view.columns[:2]:
        assert col.label in col.title.text() and "tok/s" in col.metrics.text()
    t = tally(INT4, INT8, view.votes_file)
    assert (t.wins(INT8), t.wins(INT4), t.ties) == (1, 0, 0)
    assert "1 blind vote: INT4 better 0, INT8 better 1, 0 ties" in view.tally.text(), (
        view.tally.text()
    )
    # Again, a tie: the tally goes on.
    _run(qtbot, view)
    view.tie_button.click()
    t = tally(INT4, INT8, view.votes_file)
    assert (t.wins(INT8), t.ties, t.votes) == (1, 1, 2)
    assert "2 blind votes: INT4 better 0, INT8 better 1, 1 tie" in view.tally.text()


def test_bad_input_is_one_sentence_and_nothing_loads(qtbot, view):
    view.pick([INT4])
    assert "two or three" in view.plan.text()
    view.run_button.click()
    assert view.job is None and view.message.isVisible() and Counted.alive == []
    view.pick([INT4, INT8])
    view.instruction.setPlainText("   ")
    view.run_button.click()
    assert view.job is None and "empty" in view.message.text().lower()
    assert view.message.property("error") is True


def test_memory_decides_all_at_once_one_at_a_time_or_nothing(qtbot, view, monkeypatch):
    """Free memory is read before anything loads (models/capacity.py): here the system is
    made to report less than the three need together, then less than the largest alone."""
    from dolly_desktop.ui.compare import view as view_module

    view.pick([INT4, INT8, FP16])
    fp16 = next(c for c in view.plan_now()[0] if c.label == FP16)
    monkeypatch.setattr(view_module, "available_memory_bytes", lambda: fp16.run_ram + 1)
    view.pick([INT4, INT8, FP16])
    assert "Loading one at a time, each freed before the next" in view.plan.text()
    Counted.most.clear()
    view.max_new.setValue(8)
    _run(qtbot, view)
    assert max(Counted.most) == 1 and Counted.alive == []  # never two engines at once
    assert "loaded one at a time" in view.status.text()
    assert all(c.outcome and c.outcome.tokens > 0 for c in view.columns)
    monkeypatch.setattr(view_module, "available_memory_bytes", lambda: fp16.run_ram - 1)
    view.pick([INT4, FP16])
    assert f"Comparing with {FP16} needs about" in view.plan.text()
    view.job = None
    view.run_button.click()
    assert view.job is None and view.message.property("error") is True


def test_open_compare_shows_one_window_per_parent(qtbot, store):
    from PySide6.QtWidgets import QWidget

    from dolly_desktop.ui.compare import open_compare

    parent = QWidget()
    qtbot.addWidget(parent)
    first = open_compare(parent, "Who is Dolly?", store=store)
    again = open_compare(parent, "Name 3 advantages to be a cat", "A passage.")
    assert again is first and first.isVisible()
    assert first.instruction.toPlainText() == "Name 3 advantages to be a cat"
    assert first.context.toPlainText() == "A passage."
    first.close()


def test_a_model_opened_from_a_folder_outside_the_store_is_offered_too(
    qtbot, tiny_models, tmp_path
):
    """--model FOLDER or File → Open: the loaded model is not in the store, and Compare still
    offers (and ticks) it, beside the store's variants; a server's URL is not offered."""
    from dolly_desktop.ui.compare import open_compare

    empty = Store(tmp_path / "models")
    folder = tmp_path / "mine" / "INT8"
    copy_model(tiny_models["INT8"], folder)
    parent = QWidget()
    qtbot.addWidget(parent)
    window = open_compare(parent, "Who is Dolly?", current=str(folder), store=empty)
    (box, m) = window.model_boxes[0]
    assert len(window.model_boxes) == 1 and m.path == folder and box.isChecked()
    assert "mine/INT8" in box.text() and "No model is installed" not in window.pick_hint.text()
    window.refresh_models("http://127.0.0.1:9/v1")  # now a server's model: nothing to load here
    assert window.model_boxes == [] and "No model is installed" in window.pick_hint.text()
    window.close()
