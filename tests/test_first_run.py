"""The first hour in the window: the best installed model loads without asking; with none,
the first-run panel recommends one for this machine and downloads it with one click."""

from __future__ import annotations

import time

import pytest
from hub_server import HubServer
from huggingface_hub import constants

from dolly_desktop.models.capacity import GB
from dolly_desktop.models.choice import recommend
from dolly_desktop.models.store import Store
from dolly_desktop.ui.main_window import MainWindow

MS = 120_000


@pytest.fixture(autouse=True)
def own_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DOLLY_DESKTOP_HOME", str(tmp_path / "home"))


def test_the_best_installed_model_loads_without_asking(qtbot, tiny_models):
    store = Store()
    store.import_folder(tiny_models["INT4"], name="dolly-v2-3b", precision="INT4")
    store.import_folder(tiny_models["INT8"], name="dolly-v2-3b", precision="INT8")
    w = MainWindow()
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(lambda: w.model_dir is not None, timeout=MS)
    assert w.model_dir == str(store.path_for("dolly-v2-3b", "INT8"))  # higher precision fits
    assert not w.first_run.isVisible()
    w.close()


def test_the_panel_recommends_for_the_figures_it_is_given(qtbot):
    w = MainWindow()
    qtbot.addWidget(w)
    panel = w.first_run
    for ram, disk in ((6 * GB, 200 * GB), (64 * GB, 200 * GB), (64 * GB, 3 * GB)):
        v = panel.advise(ram=ram, free_disk=disk)
        assert v == recommend(ram, disk)
        label = f"{v.model} {v.precision.value}"
        assert panel.download_button.text() == f"Download {label}"
        assert label in panel.advice.text() and "Recommended" in panel.advice.text()
    panel.advise(ram=1 * GB, free_disk=1 * GB)
    assert "may not fit" in panel.advice.text()
    w.close()


def test_one_click_download_to_the_first_streamed_token(
    qtbot, tiny_models, monkeypatch, report_figure, tmp_path
):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    w = MainWindow()
    qtbot.addWidget(w)
    w.show()
    panel = w.first_run
    assert panel.isVisible()
    v = panel.choice
    with HubServer() as hub:
        hub.add_repo(v.repo_id, tiny_models["INT4"])  # the tiny model under the real repo id
        panel.endpoint = hub.url
        t0 = time.perf_counter()
        panel.download_button.click()
        qtbot.waitUntil(lambda: w.model_dir is not None, timeout=MS)
    qtbot.wait(50)
    w.grab().save(str(tmp_path / "after-download.png"))
    w.instruction.setPlainText("Who is Dolly?")
    first: list[float] = []
    w.worker.piece.connect(lambda _p: first or first.append(time.perf_counter()))
    with qtbot.waitSignal(w.response_done, timeout=MS):
        w.submit()
    report_figure(
        "first run: one-click download (tiny INT4) to first token", f"{first[0] - t0:.2f} s"
    )
    assert w.model_dir == str(Store().path_for(v.model, v.precision.value))
    assert not panel.isVisible() and w.last_result.generated_tokens > 0
    w.close()


def test_a_cancelled_first_download_installs_nothing(qtbot, tiny_models, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    w = MainWindow()
    qtbot.addWidget(w)
    panel = w.first_run
    with HubServer() as hub:
        hub.add_repo(panel.choice.repo_id, tiny_models["FP16"])
        panel.endpoint = hub.url
        panel.download_button.click()
        panel.cancel()
        with qtbot.waitSignal(panel.job.ended, timeout=MS):
            pass
    assert Store().list() == [] and w.model_dir is None
    assert "stopped" in panel.message.text() or "failed" in panel.message.text()
    w.close()


def test_a_failed_download_is_an_error_with_the_log_and_a_hint(qtbot, monkeypatch):
    """An unreachable Hub: the sentence is styled as an error, names the log file's path and
    says what to try (the connection, HF_ENDPOINT)."""
    from dolly_desktop.logs import log_file
    from dolly_desktop.ui.look import ERROR_STYLE

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    w = MainWindow()
    qtbot.addWidget(w)
    w.show()
    panel = w.first_run
    panel.endpoint = "http://127.0.0.1:9"  # nothing listens on the discard port
    panel.download_button.click()
    with qtbot.waitSignal(panel.job.ended, timeout=MS):
        pass
    text = panel.message.text()
    assert panel.message.isVisible() and text.startswith("The download failed")
    assert log_file() in text and "HF_ENDPOINT" in text and "connection" in text
    assert panel.message.property("error") is True
    assert panel.message.styleSheet() == ERROR_STYLE
    w.close()


def test_the_panel_keeps_its_height_when_a_download_starts(qtbot):
    w = MainWindow()
    qtbot.addWidget(w)
    w.resize(1000, 700)
    w.show()
    panel = w.first_run
    qtbot.wait(50)
    before = panel.height(), w.splitter.mapTo(w, w.splitter.rect().topLeft()).y()
    panel._busy(True)  # what download() shows, without a Hub
    long = "Downloading openvino_model.bin: 1.2 GB of 1.9 GB at 31.4 MB/s, 23 s left " * 3
    panel._show_progress(long, 0.4)
    qtbot.wait(50)
    assert panel.progress.isVisible()
    after = panel.height(), w.splitter.mapTo(w, w.splitter.rect().topLeft()).y()
    assert after == before
    assert w.width() == 1000
    panel._busy(False)
    w.close()
