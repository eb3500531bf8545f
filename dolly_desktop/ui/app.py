"""Start the GUI (and the scripted screenshot mode)."""

from __future__ import annotations

import logging
import sys

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from dolly_desktop import APP_NAME
from dolly_desktop.generation.examples import EXAMPLES
from dolly_desktop.generation.params import GenerationParams
from dolly_desktop.ui.icon import app_icon
from dolly_desktop.ui.look import follow_color_scheme
from dolly_desktop.ui.main_window import MainWindow

log = logging.getLogger(__name__)


def make_app() -> QApplication:
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName(APP_NAME)
    app.setOrganizationName("Dolly Desktop")
    app.setDesktopFileName("dolly-desktop")
    app.setWindowIcon(app_icon())
    follow_color_scheme(app)
    return app  # type: ignore[return-value]


def run_gui(model: str | None = None, screenshot: str | None = None) -> int:
    app = make_app()
    window = MainWindow(model=model, scripted=bool(screenshot))
    window.show()
    if screenshot:
        _script_screenshot(window, screenshot)
    return app.exec()


def _script_screenshot(window: MainWindow, path: str) -> None:
    """Load, answer the first example greedily, save a picture of the window, quit."""

    def shoot() -> None:
        window.grab().save(path)
        print(f"saved {path}")
        window.close()

    def when_loaded() -> None:
        if window.model_dir is None:  # the load failed: show that
            QTimer.singleShot(300, shoot)
            return
        window.use_example(EXAMPLES[5])
        window.set_params(GenerationParams(greedy=True, max_new_tokens=60))
        window.submit()

    # Window signals fire on the GUI thread (the worker's would call these on its thread).
    window.load_done.connect(when_loaded)
    window.response_done.connect(lambda: QTimer.singleShot(300, shoot))
    if window.model_dir is None and not window.loading:
        QTimer.singleShot(500, shoot)
