"""`--screenshot` is a scripted run: it answers an example greedily and saves a picture, and
leaves the person's settings and history exactly as they were."""

from __future__ import annotations

from dolly_desktop.generation.params import GenerationParams
from dolly_desktop.history.store import History
from dolly_desktop.ui.app import _script_screenshot
from dolly_desktop.ui.main_window import MainWindow
from dolly_desktop.ui.settings import AppSettings

MS = 60_000


def test_a_screenshot_run_leaves_settings_and_history_as_they_were(
    qtbot, own_home, tiny_fp16, tiny_models, tmp_path
):
    mine = GenerationParams(max_new_tokens=123, temperature=1.3, seed=7)
    w = MainWindow(model=str(tiny_fp16))
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(lambda: w.model_dir is not None, timeout=MS)
    w.instruction.setPlainText("Who is Dolly?")
    w.set_params(mine)
    with qtbot.waitSignal(w.response_done, timeout=MS):
        w.submit()
    w.close()
    ini = own_home / "data" / "settings.ini"
    db = own_home / "data" / "history.sqlite3"
    before = ini.read_bytes(), History().count(), db.stat().st_mtime_ns
    assert History().count() == 1 and AppSettings().load_params() == mine

    png = tmp_path / "shot.png"
    shot = MainWindow(model=str(tiny_models["INT4"]), scripted=True)  # another model, too
    qtbot.addWidget(shot)
    shot.show()
    _script_screenshot(shot, str(png))
    qtbot.waitUntil(lambda: png.exists() and not shot.isVisible(), timeout=MS)
    assert shot.last_result is not None and shot.last_result.generated_tokens > 0
    assert shot.params().greedy  # the scripted run did change its own parameters

    assert AppSettings().load_params() == mine
    assert AppSettings().model_folder == str(tiny_fp16)
    assert (ini.read_bytes(), History().count(), db.stat().st_mtime_ns) == before
