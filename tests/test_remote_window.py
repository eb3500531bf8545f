"""The remote engine end to end through the window and its worker (pytest-qt), against a real
`dolly-desktop serve` subprocess, including the server dying mid-generation."""

from __future__ import annotations

import pytest
from serving import serve_process

from dolly_desktop.generation.engine import StopReason
from dolly_desktop.generation.engines.local import Engine
from dolly_desktop.generation.params import GenerationParams
from dolly_desktop.ui.main_window import MainWindow

MS = 60_000


@pytest.fixture(autouse=True)
def own_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DOLLY_DESKTOP_HOME", str(tmp_path / "home"))


def test_remote_server_through_the_window(qtbot, tiny_models):
    model = tiny_models["INT4"]
    with serve_process(model, "--api-key", "k") as served:
        w = MainWindow()
        qtbot.addWidget(w)
        w.show()
        dialog = w.open_settings()
        dialog.remote_url.setText(served.url)
        dialog.remote_key.setText("wrong")
        dialog.test_button.click()
        qtbot.waitUntil(lambda: "key" in dialog.remote_status.text().lower(), timeout=MS)
        dialog.remote_key.setText("k")
        dialog.test_button.click()
        qtbot.waitUntil(lambda: "answered" in dialog.remote_status.text(), timeout=MS)
        with qtbot.waitSignal(w.load_done, timeout=MS):
            dialog.use_remote_button.click()
        assert w.worker.engine.device == "remote", w.error_text()
        assert "remote" in w.model_label.text()

        params = GenerationParams(greedy=True, max_new_tokens=12)
        w.instruction.setPlainText("Who is Dolly?")
        w.set_params(params)
        pieces: list[str] = []
        w.worker.piece.connect(pieces.append)
        with qtbot.waitSignal(w.response_done, timeout=MS):
            w.submit()
        expected = Engine(model).generate("Who is Dolly?", params)
        assert w._response_text == expected.text
        assert len(pieces) > 1
        assert w.last_result.generated_tokens == 12
        assert "tok/s" in w.stats_label.text()

        # Stop works the same as locally.
        w.set_params(GenerationParams(max_new_tokens=1000, seed=1))
        w.submit()
        qtbot.waitUntil(lambda: len(w._response_text) > 10, timeout=MS)
        with qtbot.waitSignal(w.response_done, timeout=MS):
            w.stop()
        assert w.last_result.stop_reason is StopReason.CANCELLED

        # The server dies mid-generation: one sentence in the window, the app stays usable.
        w.submit()
        qtbot.waitUntil(lambda: len(w._response_text) > 10, timeout=MS)
        with qtbot.waitSignal(w.response_done, timeout=MS):
            served.proc.kill()
        assert w.error_text(), "a clear error is shown"
        assert not w.generating and w.submit_button.isEnabled()
        w.close()
