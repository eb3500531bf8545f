"""Persistent settings in one INI file under the app's data folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSettings

from dolly_desktop import paths
from dolly_desktop.errors import DollyError
from dolly_desktop.generation.params import GenerationParams

log = logging.getLogger(__name__)


def app_settings() -> QSettings:
    return QSettings(str(paths.data_dir() / "settings.ini"), QSettings.Format.IniFormat)


def load_params(s: QSettings) -> GenerationParams:
    """Saved parameters, or the defaults when none are saved or they no longer validate."""
    defaults = GenerationParams().to_dict()
    values: dict[str, Any] = {}
    for name, default in defaults.items():
        raw = s.value(f"params/{name}")
        if raw is None or raw == "":
            values[name] = default
        elif name == "greedy":
            values[name] = str(raw).lower() in ("true", "1")
        elif name == "seed":
            values[name] = None if str(raw) == "none" else int(raw)
        else:
            values[name] = type(default)(raw)
    try:
        return GenerationParams(**values)
    except (DollyError, ValueError) as e:
        log.warning("saved parameters ignored: %s", e)
        return GenerationParams()


def save_params(s: QSettings, p: GenerationParams) -> None:
    for name, value in p.to_dict().items():
        s.setValue(f"params/{name}", "none" if value is None else value)


def engine_options(s: QSettings) -> dict[str, Any]:
    """Engine keyword arguments from the Inference settings (cache folder, performance hint)."""
    opts: dict[str, Any] = {}
    cache = str(s.value("inference/cache_dir", "") or "")
    if cache:
        opts["cache_dir"] = Path(cache)
    hint = str(s.value("inference/hint", "") or "")
    if hint:
        opts["properties"] = {"PERFORMANCE_HINT": hint}
    return opts
