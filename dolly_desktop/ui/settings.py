"""Persistent settings in one INI file under the app's data folder, with typed keys.

Every key the app keeps is declared once here (`AppSettings`); nothing else names a key string.
Settings are preferences to restore at the next start, never how one part of the window tells
another what is loaded: that is the window's own state.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Generic, TypeVar

from PySide6.QtCore import QByteArray, QSettings

from dolly_desktop import paths
from dolly_desktop.errors import DollyError
from dolly_desktop.generation.lookup import LookupMode, parse_mode
from dolly_desktop.generation.params import GenerationParams

log = logging.getLogger(__name__)

T = TypeVar("T")


class _Key(Generic[T]):
    """One typed key: `settings.model_folder` reads it, `settings.model_folder = x` writes it.
    QSettings' INI format gives back strings for everything: the type is restored here."""

    def __init__(self, key: str, default: T) -> None:
        self.key = key
        self.default = default

    def __get__(self, obj: AppSettings, owner: type | None = None) -> T:
        raw = obj.qs.value(self.key)
        if raw is None or raw == "":
            return self.default
        if isinstance(self.default, bool):
            return str(raw).lower() in ("true", "1")  # type: ignore[return-value]
        if isinstance(self.default, QByteArray):
            return raw if isinstance(raw, QByteArray) else self.default
        return type(self.default)(raw)  # type: ignore[call-arg]

    def __set__(self, obj: AppSettings, value: T) -> None:
        stored: Any = ("true" if value else "false") if isinstance(value, bool) else value
        obj.qs.setValue(self.key, stored)


class AppSettings:
    model_folder = _Key("model/folder", "")  # the last local model loaded
    device = _Key("model/device", "CPU")
    remote_url = _Key("model/remote_url", "")  # set when the last model was a server
    remote_key = _Key("model/remote_key", "")
    history_enabled = _Key("history/enabled", True)
    performance_hint = _Key("inference/hint", "")
    cache_dir = _Key("inference/cache_dir", "")
    prompt_lookup = _Key("inference/prompt_lookup", LookupMode.OFF.value)  # off, on, auto
    calibrate = _Key("inference/calibrate", True)  # measure CPU settings while idle (tune)
    window_geometry = _Key("window/geometry", QByteArray())
    window_splitter = _Key("window/splitter", QByteArray())
    zoom = _Key("view/zoom", 0)  # points added to the text's normal size

    def __init__(self, qs: QSettings | None = None) -> None:
        path = str(paths.data_dir() / "settings.ini")
        self.qs = qs or QSettings(path, QSettings.Format.IniFormat)

    def sync(self) -> None:
        self.qs.sync()

    def load_params(self) -> GenerationParams:
        """Saved parameters, or the defaults when none are saved or they no longer validate."""
        defaults = GenerationParams().to_dict()
        values: dict[str, Any] = {}
        for name, default in defaults.items():
            raw = self.qs.value(f"params/{name}")
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

    def save_params(self, p: GenerationParams) -> None:
        for name, value in p.to_dict().items():
            self.qs.setValue(f"params/{name}", "none" if value is None else value)

    def lookup_mode(self) -> LookupMode:
        """The saved prompt-lookup choice, or off if what is saved is not one."""
        try:
            return parse_mode(self.prompt_lookup)
        except DollyError as e:
            log.warning("saved prompt lookup ignored: %s", e)
            return LookupMode.OFF

    def engine_options(self) -> dict[str, Any]:
        """Engine keyword arguments from the Inference settings (cache folder, hint, prompt
        lookup, calibration: off here, else what the process's mode says)."""
        opts: dict[str, Any] = {"prompt_lookup": self.lookup_mode()}
        if not self.calibrate:
            opts["calibrate"] = False
        if self.cache_dir:
            opts["cache_dir"] = Path(self.cache_dir)
        if self.performance_hint:
            opts["properties"] = {"PERFORMANCE_HINT": self.performance_hint}
        return opts
