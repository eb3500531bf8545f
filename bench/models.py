"""Benchmark models: random-weight Dolly-shaped checkpoints exported with the app's own code,
cached outside the repo (DOLLY_BENCH_CACHE, default ~/.cache/dolly-desktop-bench)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from dolly_desktop.core.compress import Precision
from dolly_desktop.core.export import export_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "tests" / "fixtures" / "dolly-v2-tokenizer"


def cache_dir() -> Path:
    return Path(os.environ.get("DOLLY_BENCH_CACHE", Path.home() / ".cache/dolly-desktop-bench"))


def checkpoint(shape: str) -> Path:
    from dolly_desktop.devtools import build_random_dolly

    dest = cache_dir() / f"{shape}-checkpoint"
    if not (dest / "config.json").is_file():
        build_random_dolly(dest, TOKENIZER, shape=shape)
    return dest


def ir(shape: str, precision: str) -> Path:
    """The exported IR folder for a shape ('tiny' or '3b') and precision, built once."""
    dest = cache_dir() / f"{shape}-{precision}"
    if not dest.exists():
        export_checkpoint(checkpoint(shape), dest, Precision(precision))
    return dest


def machine() -> str:
    import openvino as ov

    cpu = ov.Core().get_property("CPU", "FULL_DEVICE_NAME")
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()}, "
        f"OpenVINO {ov.get_version()}"
    )
