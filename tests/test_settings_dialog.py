"""The model settings dialog with pytest-qt: export, cancel, download, select, device."""

from __future__ import annotations

import pytest
from hub_server import HubServer
from huggingface_hub import constants

from dolly_desktop.models.store import Store
from dolly_desktop.ui.main_window import MainWindow

JOB_MS = 120_000


@pytest.fixture(autouse=True)
def own_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DOLLY_DESKTOP_HOME", str(tmp_path / "home"))


@pytest.fixture
def window(qtbot):
    w = MainWindow()
    qtbot.addWidget(w)
    w.show()
    yield w
    w.close()


def _row_of(dialog, name: str, variant: str) -> int:
    return next(i for i, r in enumerate(dialog.rows) if (r.name, r.variant) == (name, variant))


def test_export_in_the_dialog_then_use_it(qtbot, window, tiny_checkpoint):
    dialog = window.open_settings()
    dialog.precision.setCurrentIndex(dialog.precision.findText("INT4"))
    dialog.export_checkpoint(str(tiny_checkpoint))
    assert dialog.cancel_button.isVisible() and not dialog.export_button.isEnabled()
    with qtbot.waitSignal(dialog.job.ended, timeout=JOB_MS):
        pass
    assert "done" in dialog.message.text(), dialog.message.text()
    row = _row_of(dialog, "tiny-dolly", "INT4")
    assert dialog.table.item(row, 2).text() == "installed"
    dialog.table.selectRow(row)
    with qtbot.waitSignal(window.load_done, timeout=JOB_MS):
        dialog.use_button.click()
    installed = Store().get("tiny-dolly", "INT4")
    assert window.model_dir == str(installed.path)
    assert dialog.table.item(row, 2).text() == "in use"
    assert "Loading" not in dialog.message.text()  # the window has answered
    assert dialog.message.text() == "tiny-dolly INT4 is loaded and in use."


def test_cancel_a_running_export_leaves_nothing(qtbot, window, tiny_checkpoint):
    dialog = window.open_settings()
    dialog.precision.setCurrentIndex(dialog.precision.findText("INT8"))
    dialog.export_checkpoint(str(tiny_checkpoint))
    job = dialog.job
    # Wait until the child reports real work, then cancel it.
    qtbot.waitUntil(lambda: "converting" in dialog.progress_label.text(), timeout=JOB_MS)
    with qtbot.waitSignal(job.cancelled, timeout=JOB_MS):
        dialog.cancel_button.click()
    assert "cancelled; nothing was installed" in dialog.message.text()
    store = Store()
    assert not [m for m in store.list() if m.name == "tiny-dolly"]
    leftovers = [p for p in store.root.rglob("*") if ".partial" in p.name]
    assert leftovers == []
    assert dialog.export_button.isEnabled()


def test_download_a_ready_made_variant(qtbot, window, tiny_models, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with HubServer() as hub:
        hub.add_repo("OpenVINO/dolly-v2-3b-int4-ov", tiny_models["INT4"])
        dialog = window.open_settings()
        dialog.endpoint = hub.url
        dialog.table.selectRow(_row_of(dialog, "dolly-v2-3b", "INT4"))
        assert dialog.download_button.isEnabled()
        dialog.download_button.click()
        with qtbot.waitSignal(dialog.job.ended, timeout=JOB_MS):
            pass
    assert "done" in dialog.message.text(), dialog.message.text()
    row = _row_of(dialog, "dolly-v2-3b", "INT4")
    assert dialog.table.item(row, 2).text() == "installed"


def test_switching_device_reloads_the_model(qtbot, tiny_fp16):
    w = MainWindow(model=str(tiny_fp16))
    qtbot.addWidget(w)
    with qtbot.waitSignal(w.load_done, timeout=JOB_MS):
        w.show()
    dialog = w.open_settings()
    auto = dialog.device.findData("AUTO")
    dialog.device.setCurrentIndex(auto)
    with qtbot.waitSignal(w.load_done, timeout=JOB_MS):
        dialog.device.activated.emit(auto)
    assert w.worker.engine.device == "AUTO"
    assert w.device.currentData() == "AUTO"
    w.close()


def test_cancel_before_a_compress_has_started_installs_nothing(
    qtbot, window, tiny_models, monkeypatch
):
    """Cancel clicked while the compression is still being set up (its child not started yet)
    must stop it: before, the cancel was lost and the compressed model installed anyway."""
    import time

    from dolly_desktop.models import child
    from dolly_desktop.ui.model_setup import settings_dialog

    Store().import_folder(tiny_models["FP16"], name="tiny")

    def slow_compress_job(*args, **kwargs):
        time.sleep(0.5)  # a slow start: the Cancel below comes before the child exists
        return child.compress_job(*args, **kwargs)

    monkeypatch.setattr(settings_dialog, "compress_job", slow_compress_job)
    dialog = window.open_settings()
    dialog.table.selectRow(_row_of(dialog, "tiny", "FP16"))
    dialog.precision.setCurrentIndex(dialog.precision.findText("INT8"))
    dialog.compress_selected()
    dialog.cancel_job()
    with qtbot.waitSignal(dialog.job.ended, timeout=JOB_MS):
        pass
    assert "cancelled; nothing was installed" in dialog.message.text(), dialog.message.text()
    assert [m.variant for m in Store().list() if m.name == "tiny"] == ["FP16"]


def test_the_export_that_asked_for_export_support_starts_when_it_is_installed(
    qtbot, window, monkeypatch, tmp_path
):
    """No torch/optimum yet: Export offers the install; when the install has succeeded, the
    same export (same checkpoint) starts by itself, without a second click."""
    from pathlib import Path

    from PySide6.QtWidgets import QMessageBox

    from dolly_desktop.models.convert import export_support
    from dolly_desktop.ui.model_setup import settings_dialog

    installed = []
    exports: list[Path] = []

    class FakeChild:
        progress = None

        def __init__(self, src: Path) -> None:
            self.src = src

        def run(self) -> Path:
            exports.append(self.src)
            return self.src

        def cancel(self) -> None:
            pass

    monkeypatch.setattr(export_support, "available", lambda: bool(installed))
    monkeypatch.setattr(export_support, "pip_command", lambda: ["pip", "install"])
    monkeypatch.setattr(export_support, "install", lambda *_a: installed.append(True))
    monkeypatch.setattr(settings_dialog, "export_job", lambda _s, src, _p: FakeChild(src))
    monkeypatch.setattr(QMessageBox, "question", lambda *_a, **_k: QMessageBox.StandardButton.Yes)
    dialog = window.open_settings()
    ckpt = tmp_path / "dolly-v2-3b"
    dialog.export_checkpoint(str(ckpt))
    install_job = dialog.job
    assert install_job.title.startswith("Installing export support")
    qtbot.waitUntil(lambda: dialog.job is not install_job, timeout=JOB_MS)
    assert installed and dialog.job.title.startswith("Exporting dolly-v2-3b")
    qtbot.waitUntil(lambda: dialog.job.over, timeout=JOB_MS)
    assert exports == [ckpt]
    assert "done" in dialog.message.text()


def test_a_failed_install_starts_no_export(qtbot, window, monkeypatch):
    from PySide6.QtWidgets import QMessageBox

    from dolly_desktop.errors import DollyError
    from dolly_desktop.models.convert import export_support

    def fail(*_a):
        raise DollyError("pip could not install torch.")

    monkeypatch.setattr(export_support, "available", lambda: False)
    monkeypatch.setattr(export_support, "pip_command", lambda: ["pip", "install"])
    monkeypatch.setattr(export_support, "install", fail)
    monkeypatch.setattr(QMessageBox, "question", lambda *_a, **_k: QMessageBox.StandardButton.Yes)
    dialog = window.open_settings()
    dialog.export_checkpoint("/nowhere")
    job = dialog.job
    with qtbot.waitSignal(job.ended, timeout=JOB_MS):
        pass
    qtbot.wait(50)
    assert dialog.job is job and "pip could not install torch" in dialog.message.text()
    assert dialog.message.property("error") is True


def test_opening_model_settings_offline_prints_nothing_on_the_terminal(
    qtbot, window, monkeypatch, capfd
):
    """The Hub cannot be reached (no network here): the catalog refresh fails quietly, in the
    log only; no retry warnings on the terminal."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    capfd.readouterr()
    dialog = window.open_settings()
    with qtbot.waitSignal(dialog._hub_job.ended, timeout=JOB_MS):
        pass
    qtbot.wait(100)
    err = capfd.readouterr().err
    assert "etry" not in err and "WARNING" not in err, err


# -- the agreement check (issue 25) -----------------------------------------------------------


def test_the_table_shows_a_variants_stored_check_beside_its_size(qtbot, window, tiny_models):
    from conftest import copy_model

    from dolly_desktop.models.checks import CheckRecord, cpu_name, write_check
    from dolly_desktop.ui.model_setup.settings_dialog import AGREEMENT_COLUMN, COLUMNS

    store = Store()
    for p in ("FP16", "INT4"):
        copy_model(tiny_models[p], store.path_for("tiny", p))
    record = CheckRecord(
        model="tiny", variant="INT4", reference="tiny/FP16", top1=0.93, mean_kl=0.0123,
        median_first_divergence=7.0, prompts=50, tokens=2400, max_new_tokens=48,
        prompt_set="built-in", date="2026-12-02T10:00:00+0000", cpu=cpu_name(),
    )  # fmt: skip
    write_check(store.path_for("tiny", "INT4"), record)
    dialog = window.open_settings()
    assert COLUMNS[AGREEMENT_COLUMN - 1] == "Size"  # next to size and compression rate
    int4, fp16 = _row_of(dialog, "tiny", "INT4"), _row_of(dialog, "tiny", "FP16")
    cell = dialog.table.item(int4, AGREEMENT_COLUMN)
    says = "INT4: 93% of tokens as FP16, measured on this computer, 50 prompts, 2026-12-02"
    assert cell.text() == says
    assert "mean KL 0.0123" in cell.toolTip() and "part at token 7" in cell.toolTip()
    assert dialog.table.item(fp16, AGREEMENT_COLUMN).text() == ""
    dialog.table.selectRow(int4)
    detail = dialog.detail.text()
    assert "Compression rate" in detail and says in detail, detail
    assert dialog.check_button.isEnabled()
    dialog.table.selectRow(fp16)  # nothing above FP16 to check it against
    assert not dialog.check_button.isEnabled() and "93%" not in dialog.detail.text()


def test_after_a_compress_the_dialog_offers_the_check_with_progress_and_cancel(
    qtbot, window, tiny_models
):
    from dolly_desktop.models.checks import CHECK_FILE, read_check
    from dolly_desktop.ui.model_setup.settings_dialog import AGREEMENT_COLUMN

    Store().import_folder(tiny_models["FP16"], name="tiny")
    dialog = window.open_settings()
    dialog.table.selectRow(_row_of(dialog, "tiny", "FP16"))
    dialog.precision.setCurrentIndex(dialog.precision.findText("INT8"))
    dialog.compress_selected()
    with qtbot.waitSignal(dialog.job.ended, timeout=JOB_MS):
        pass
    qtbot.waitUntil(dialog.offer_button.isVisible, timeout=5_000)
    assert "How close is INT8 to FP16?" in dialog.message.text(), dialog.message.text()
    assert dialog.offer_button.text() == "Check INT8 against FP16"
    int8 = Store().get("tiny", "INT8").path
    # Offered, taken, cancelled once it is under way: nothing is stored.
    dialog.offer_button.click()
    job = dialog.job
    assert job.title == "Checking tiny/INT8 against FP16" and dialog.cancel_button.isVisible()
    qtbot.waitUntil(lambda: "prompt" in dialog.progress_label.text(), timeout=JOB_MS)
    with qtbot.waitSignal(job.ended, timeout=JOB_MS):
        dialog.cancel_button.click()
    assert "cancelled; nothing was stored" in dialog.message.text(), dialog.message.text()
    assert not (int8 / CHECK_FILE).exists() and not dialog.offer_button.isVisible()
    # Again from the button, to the end: stored, and shown in the table.
    dialog.check_tokens = 4
    dialog.table.selectRow(_row_of(dialog, "tiny", "INT8"))
    dialog.check_button.click()
    with qtbot.waitSignal(dialog.job.ended, timeout=JOB_MS):
        pass
    record = read_check(int8)
    assert record is not None and record.reference == "tiny/FP16" and record.prompts == 50
    assert record.summary() in dialog.message.text(), dialog.message.text()
    cell = dialog.table.item(_row_of(dialog, "tiny", "INT8"), AGREEMENT_COLUMN)
    assert cell.text() == record.summary()


def test_a_variant_with_no_download_is_exported_from_the_checkpoint_on_disk(
    qtbot, window, tiny_checkpoint, monkeypatch
):
    """'export from the original': the row's button asks for the Hugging Face checkpoint
    folder (the OS file dialog, patched to answer) and exports it as that very variant."""
    from PySide6.QtWidgets import QFileDialog

    from dolly_desktop.ui.model_setup.settings_dialog import ORIGINAL_BUTTON

    dialog = window.open_settings()
    row = next(
        i for i, r in enumerate(dialog.rows) if not r.installed and not r.repo_id
    )  # a catalog variant with no ready-made repo
    name, variant = dialog.rows[row].name, dialog.rows[row].variant
    assert dialog.table.item(row, 2).text() == "export from the original"
    asked: list[str] = []

    def pick(_parent, title, *_a, **_k):
        asked.append(title)
        return str(tiny_checkpoint)

    monkeypatch.setattr(QFileDialog, "getExistingDirectory", pick)
    dialog.table.selectRow(row)
    assert dialog.download_button.text() == ORIGINAL_BUTTON
    assert dialog.download_button.isEnabled()
    dialog.download_button.click()
    assert asked and name in asked[0]
    with qtbot.waitSignal(dialog.job.ended, timeout=JOB_MS):
        pass
    assert "done" in dialog.message.text(), dialog.message.text()
    installed = Store().get(name, variant)  # the row's own name and precision
    assert installed.runnable and installed.variant == variant
    assert dialog.table.item(_row_of(dialog, name, variant), 2).text() == "installed"


def test_a_folder_that_is_no_checkpoint_is_refused_in_one_line(
    qtbot, window, tmp_path, tiny_models, monkeypatch
):
    """Neither a folder with no model nor an OpenVINO model folder starts an export."""
    from PySide6.QtWidgets import QFileDialog

    dialog = window.open_settings()
    row = next(i for i, r in enumerate(dialog.rows) if not r.installed and not r.repo_id)
    (tmp_path / "notes.txt").write_text("not a model")
    dialog.table.selectRow(row)
    for folder in (tmp_path, tiny_models["INT4"]):
        monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *_a, f=folder, **_k: str(f))
        dialog.download_button.click()
        assert dialog.job is None, folder  # nothing started
        text = dialog.message.text()
        assert text and "\n" not in text and dialog.message.property("error"), text
    assert "Import folder" in dialog.message.text()  # what to do with a model folder
    assert Store().list() == []


def test_the_inference_tab_speaks_of_this_app_and_titles_its_groups(qtbot, window):
    from PySide6.QtWidgets import QGroupBox, QLabel

    dialog = window.open_settings()
    page = dialog.tabs.widget(1)
    texts = " ".join(label.text() for label in page.findChildren(QLabel))
    assert "notebook" not in texts
    assert "…" not in texts  # no heading that reads like a button
    titles = [g.title() for g in page.findChildren(QGroupBox)]
    assert titles == ["On this computer", "Remote server"]


def test_model_settings_shows_the_calibration_measures_again_and_turns_it_off(
    qtbot, tiny_fp16
):
    from test_calibration import a_calibration

    from dolly_desktop.generation.tuning import calibration as cal
    from dolly_desktop.generation.tuning.rule import weight_format

    w = MainWindow(model=str(tiny_fp16))
    qtbot.addWidget(w)
    with qtbot.waitSignal(w.load_done, timeout=JOB_MS):
        w.show()
    key = cal.machine_key(weight_format(tiny_fp16))
    dialog = w.open_settings()
    assert "Not calibrated on this machine yet" in dialog.calibration.text()
    cal.store(a_calibration(key))  # as an idle calibration would have left it
    dialog = w.open_settings()
    assert "dq 128" in dialog.calibration.text() and "chosen" in dialog.calibration.text()
    with qtbot.waitSignal(w.load_done, timeout=JOB_MS):  # forgotten, then loaded again
        dialog.measure_again.click()
    assert cal.load(key) is None and "Not calibrated" in dialog.calibration.text()
    cal.store(a_calibration(key))
    with qtbot.waitSignal(w.load_done, timeout=JOB_MS):  # off: reloaded on the rule
        dialog.calibrate.setChecked(False)
    assert w.settings.engine_options()["calibrate"] is False
    assert w.worker.engine.tuning == "by the built-in rule"
    assert "built-in" in dialog.calibration.text() and not dialog.measure_again.isEnabled()
    w.close()
