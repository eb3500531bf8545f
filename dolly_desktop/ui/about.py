"""The About box: app, OpenVINO and model versions."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from PySide6.QtWidgets import QMessageBox, QWidget

from dolly_desktop import APP_NAME, __version__
from dolly_desktop.models.folder import read_config


def _v(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def about_html(model_dir: str | None) -> str:
    import openvino

    if model_dir:
        cfg = read_config(Path(model_dir))
        model = f"{Path(model_dir).name} ({cfg.get('_name_or_path') or cfg.get('model_type', '?')})"
    else:
        model = "none loaded"
    return (
        f"<h3>{APP_NAME} {__version__}</h3>"
        "<p>Databricks Dolly 2.0, run locally with OpenVINO.</p>"
        f"<p>OpenVINO {openvino.get_version()}<br>"
        f"openvino-genai {_v('openvino-genai')}<br>"
        f"openvino-tokenizers {_v('openvino-tokenizers')}<br>"
        f"Model: {model}</p>"
    )


def show_about(parent: QWidget, model_dir: str | None) -> None:
    QMessageBox.about(parent, f"About {APP_NAME}", about_html(model_dir))
