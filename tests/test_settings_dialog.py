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
    from dolly_desktop.ui import settings_dialog

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
