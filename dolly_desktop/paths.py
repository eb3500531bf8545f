"""Where the app keeps its data. DOLLY_DESKTOP_HOME puts everything under one folder
(tests and portable installs use it)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_DIR_NAME = "dolly-desktop"


def _root(kind: str) -> Path:
    home = os.environ.get("DOLLY_DESKTOP_HOME")
    if home:
        return Path(home) / kind
    if kind == "cache":
        return Path(platformdirs.user_cache_dir(APP_DIR_NAME, appauthor=False))
    return Path(platformdirs.user_data_dir(APP_DIR_NAME, appauthor=False))


def data_dir() -> Path:
    return _root("data")


def models_dir() -> Path:
    return data_dir() / "models"


def log_dir() -> Path:
    return data_dir() / "logs"


def compiled_cache_dir() -> Path:
    """OpenVINO's compiled-model cache: makes the second load of a model fast."""
    return _root("cache") / "ov-cache"
