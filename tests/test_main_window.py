"""The main window with pytest-qt against the tiny real model (offscreen)."""

from __future__ import annotations

import pytest
from conftest import copy_model
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QWidget

from dolly_desktop.generation.engine import StopReason
from dolly_desktop.generation.engines.local import Engine
from dolly_desktop.generation.examples import EXAMPLES
from dolly_desktop.generation.params import GenerationParams
from dolly_desktop.history.store import History
from dolly_desktop.ui.main_window import MainWindow

LOAD_MS = 30_000
GEN_MS = 60_000


@pytest.fixture(autouse=True)
def own_home(tmp_path, monkeypatch):
    """Settings and logs of each test in a folder of its own."""
    monkeypatch.setenv("DOLLY_DESKTOP_HOME", str(tmp_path / "home"))


def open_window(qtbot, model=None) -> MainWindow:
    w = MainWindow(model=str(model) if model else None)
    qtbot.addWidget(w)
    w.show()
    if model:
        with qtbot.waitSignal(w.load_done, timeout=LOAD_MS):
            pass
    return w


@pytest.fixture
def window(qtbot, tiny_fp16):
    w = open_window(qtbot, tiny_fp16)
    assert w.model_dir == str(tiny_fp16), w.error_text()
    yield w
    w.close()


def run(qtbot, w: MainWindow, instruction: str, params: GenerationParams) -> None:
    w.instruction.setPlainText(instruction)
    w.set_params(params)
    with qtbot.waitSignal(w.response_done, timeout=GEN_MS):
        w.submit_button.click()


def test_streams_in_several_updates_and_matches_engine(qtbot, window, tiny_fp16):
    params = GenerationParams(greedy=True, max_new_tokens=40)
    updates: list[str] = []
    window.response.document().contentsChanged.connect(
        lambda: updates.append(window.response.toPlainText())
    )
    assert window.submit_button.isEnabled()
    run(qtbot, window, "Who is Dolly?", params)
    expected = Engine(tiny_fp16, reuse_template=True).generate("Who is Dolly?", params)
    result = window.last_result
    assert result is not None and result.token_ids == expected.token_ids
    assert window._response_text == expected.text
    streamed = [u for u in updates if u]
    assert len(set(streamed)) > 2  # text grew piece by piece before the final render
    assert "tok/s" in window.stats_label.text()
    assert window.submit_button.isEnabled() and not window.stop_button.isEnabled()


def test_submit_disabled_while_generating_and_stop(qtbot, window):
    window.instruction.setPlainText(EXAMPLES[0])
    window.set_params(GenerationParams(max_new_tokens=1000, seed=3))
    window.submit_button.click()
    assert not window.submit_button.isEnabled() and window.stop_button.isEnabled()
    qtbot.waitUntil(lambda: len(window._response_text) > 20, timeout=GEN_MS)
    with qtbot.waitSignal(window.response_done, timeout=GEN_MS):
        window.stop_button.click()
    r = window.last_result
    assert r.stop_reason is StopReason.CANCELLED and r.generated_tokens < 1000
    assert "stopped" in window.stats_label.text()


def test_escape_stops(qtbot, window):
    window.instruction.setPlainText(EXAMPLES[1])
    window.set_params(GenerationParams(max_new_tokens=1000, seed=4))
    window.submit()
    qtbot.waitUntil(lambda: len(window._response_text) > 10, timeout=GEN_MS)
    with qtbot.waitSignal(window.response_done, timeout=GEN_MS):
        qtbot.keyClick(window.instruction, Qt.Key.Key_Escape)
    assert window.last_result.stop_reason is StopReason.CANCELLED


def test_ctrl_enter_submits_and_params_reach_engine(qtbot, window):
    window.instruction.setPlainText(EXAMPLES[7])
    window.spins["max_new_tokens"].setValue(5)
    window.seed_check.setChecked(True)
    window.seed.setValue(11)
    with qtbot.waitSignal(window.response_done, timeout=GEN_MS):
        qtbot.keyClick(window.instruction, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    assert window.last_result.generated_tokens == 5
    assert window.last_result.stop_reason is StopReason.LENGTH
    first = window.last_result.token_ids
    run(qtbot, window, EXAMPLES[7], window.params())  # same seed: same tokens
    assert window.last_result.token_ids == first


def test_example_click_and_clear(qtbot, window):
    item = window.examples.item(3)
    rect = window.examples.visualItemRect(item)
    qtbot.mouseClick(window.examples.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert window.instruction.toPlainText() == EXAMPLES[3]
    run(qtbot, window, EXAMPLES[3], GenerationParams(greedy=True, max_new_tokens=8))
    assert window.response.toPlainText()
    assert window.copy_button.isEnabled()
    window.copy_button.click()
    from PySide6.QtWidgets import QApplication

    assert QApplication.clipboard().text() == window._response_text
    window.clear_button.click()
    assert window.instruction.toPlainText() == "" and window.response.toPlainText() == ""
    assert not window.copy_button.isEnabled()


def test_empty_instruction_is_one_sentence(qtbot, window):
    window.instruction.setPlainText("   ")
    window.submit_button.click()
    assert "instruction is empty" in window.error_text()
    assert not window.generating and window.submit_button.isEnabled()


def test_broken_model_folder_shows_error_and_app_stays_usable(qtbot, tiny_fp16, tmp_path):
    broken = copy_model(tiny_fp16, tmp_path / "broken")
    bin_ = broken / "openvino_model.bin"
    with open(bin_, "r+b") as f:
        f.truncate(bin_.stat().st_size // 3)
    w = open_window(qtbot, broken)
    assert w.model_dir is None
    assert "truncated" in w.error_text() and "could not be loaded" in w.error_text()
    assert w.open_button.isVisible() and not w.submit_button.isEnabled()
    with qtbot.waitSignal(w.load_done, timeout=LOAD_MS):
        w.load_model(str(tiny_fp16))
    assert w.error_text() == ""
    run(qtbot, w, "Who is Dolly?", GenerationParams(greedy=True, max_new_tokens=4))
    assert w.last_result.generated_tokens == 4
    w.close()


def test_no_model_offers_the_first_run_panel(qtbot):
    w = open_window(qtbot)
    assert w.first_run.isVisible() and not w.submit_button.isEnabled()
    assert w.first_run.download_button.text().startswith("Download dolly-v2-")
    w.close()


def test_close_during_generation_stops_cleanly(qtbot, tiny_fp16):
    w = open_window(qtbot, tiny_fp16)
    w.instruction.setPlainText(EXAMPLES[2])
    w.set_params(GenerationParams(max_new_tokens=1000, seed=5))
    w.submit()
    qtbot.waitUntil(lambda: len(w._response_text) > 10, timeout=GEN_MS)
    engine = w.worker.engine
    w.close()
    assert w.engine_thread.thread.isFinished()
    assert engine.progress() == (0, 0.0)  # no generation left running
    assert engine._lock.acquire(blocking=False)
    engine._lock.release()


def test_settings_persist_across_windows(qtbot, tiny_fp16):
    w = open_window(qtbot, tiny_fp16)
    w.set_params(
        GenerationParams(
            max_new_tokens=77, temperature=1.3, top_p=0.5, top_k=20, greedy=False, seed=99
        )
    )
    w.resize(760, 560)
    w.close()
    w2 = open_window(qtbot)  # no model given: the last one loads by itself
    with qtbot.waitSignal(w2.load_done, timeout=LOAD_MS):
        pass
    p = w2.params()
    assert (p.max_new_tokens, p.temperature, p.top_p, p.top_k, p.seed) == (77, 1.3, 0.5, 20, 99)
    assert w2.model_dir == str(tiny_fp16)
    assert (w2.width(), w2.height()) == (760, 560)
    w2.close()


def test_device_switch_reloads(qtbot, window):
    auto = window.device.findData("AUTO")
    window.device.setCurrentIndex(auto)
    with qtbot.waitSignal(window.load_done, timeout=LOAD_MS):
        window.device.activated.emit(auto)
    assert window.worker.engine.device == "AUTO"
    assert "AUTO" in window.model_label.text()


def test_history_select_restore_rerun_delete(qtbot, window):
    panel = window.history_panel
    run(qtbot, window, EXAMPLES[4], GenerationParams(greedy=True, max_new_tokens=6))
    first_text = window._response_text
    run(qtbot, window, EXAMPLES[5], GenerationParams(max_new_tokens=9, seed=2))
    assert panel.list.count() == 2
    window.clear_button.click()
    panel.list.setCurrentRow(1)  # newest first: row 1 is the first run
    assert window.instruction.toPlainText() == EXAMPLES[4]
    assert window.params().greedy and window.params().max_new_tokens == 6
    assert window._response_text == first_text
    with qtbot.waitSignal(window.response_done, timeout=GEN_MS):
        panel.rerun_button.click()
    assert panel.list.count() == 3
    assert window._response_text == first_text  # greedy: the same answer again
    panel.search.setText("Androids")
    panel.refresh()
    assert panel.list.count() == 2
    panel.search.clear()
    panel.refresh()
    panel.list.setCurrentRow(0)
    panel.delete_current(confirm=False)
    assert panel.list.count() == 2
    assert window.history.count() == 2


def test_history_off_writes_nothing(qtbot, tiny_fp16, tmp_path):
    w = open_window(qtbot, tiny_fp16)
    w.history_panel.keep.setChecked(False)
    run(qtbot, w, EXAMPLES[0], GenerationParams(greedy=True, max_new_tokens=4))
    assert w.history_panel.list.count() == 0
    w.close()
    db = tmp_path / "home" / "data" / "history.sqlite3"
    assert not db.exists() or History(db).count() == 0
    w2 = open_window(qtbot)
    assert not w2.history_panel.keep.isChecked()  # the choice persists
    w2.close()


def test_a_random_run_records_its_seed_and_restoring_it_reproduces_the_answer(qtbot, window):
    """Sampling with no fixed seed: the seed chosen for the run is stored, not None, and the
    restored entry (fixed seed, that value) gives the same answer again."""
    panel = window.history_panel
    params = GenerationParams(max_new_tokens=24, temperature=1.5, top_p=1.0)
    run(qtbot, window, EXAMPLES[3], params)
    first = window._response_text
    entry = window.history.list()[0]
    assert entry.params.seed is not None and not entry.params.greedy
    run(qtbot, window, EXAMPLES[3], params)  # another random seed: another answer
    second = window.history.list()[0]
    assert second.params.seed != entry.params.seed and window._response_text != first
    panel.refresh()
    window.show_entry(entry)
    assert window.seed_check.isChecked() and window.seed.value() == entry.params.seed
    with qtbot.waitSignal(window.response_done, timeout=GEN_MS):
        window.submit_button.click()
    assert window._response_text == first
    assert window.history.list()[0].params.seed == entry.params.seed


def test_a_reload_calibrates_for_this_persons_runs_and_compare_opens_from_the_menu(
    qtbot, window, tiny_fp16
):
    from dolly_desktop.generation.tuning.calibration import DEFAULT_MIX

    assert window.worker.engine.mix == DEFAULT_MIX  # no history yet
    for n in (3, 5, 9):
        run(qtbot, window, "Who is Dolly?", GenerationParams(greedy=True, max_new_tokens=n))
    runs = window.history.list()
    with qtbot.waitSignal(window.load_done, timeout=LOAD_MS):
        window.load_model(str(tiny_fp16))
    mix = window.worker.engine.mix
    assert (mix.prompt_tokens, mix.answer_tokens) == (
        sorted(e.input_tokens for e in runs)[1],
        sorted(e.generated_tokens for e in runs)[1],
    ) != (DEFAULT_MIX.prompt_tokens, DEFAULT_MIX.answer_tokens)

    window.instruction.setPlainText("Name 3 advantages to be a cat")
    window.compare_action.trigger()
    (compare,) = [w for w in window.findChildren(QWidget) if w.windowTitle().startswith("Compare")]
    assert compare.isVisible()
    assert compare.instruction.toPlainText() == "Name 3 advantages to be a cat"
    compare.close()
