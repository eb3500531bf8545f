"""Benchmark models: random-weight Dolly-shaped checkpoints exported with the app's own code,
cached outside the repo (DOLLY_BENCH_CACHE, default ~/.cache/dolly-desktop-bench)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from dolly_desktop.atomic import staged_folder
from dolly_desktop.models.convert.compress import Int4Options, compress_ir
from dolly_desktop.models.convert.export import export_checkpoint
from dolly_desktop.models.folder import Precision

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "tests" / "fixtures" / "dolly-v2-tokenizer"


def cache_dir() -> Path:
    return Path(os.environ.get("DOLLY_BENCH_CACHE", Path.home() / ".cache/dolly-desktop-bench"))


def checkpoint(shape: str, bf16: bool = False) -> Path:
    """The random checkpoint: float32 (the bench IRs come from it) or bfloat16, the dtype
    Databricks published Dolly in (the export bench reads it, as a user's export would)."""
    from devtools.dolly_builder import build_random_dolly

    dest = cache_dir() / f"{shape}-{'bf16-' if bf16 else ''}checkpoint"
    if not (dest / "config.json").is_file():
        build_random_dolly(dest, TOKENIZER, shape=shape, bf16=bf16)
    return dest


# INT4 export variants for the group-size / symmetry / ratio sweep (the plain "INT4" is the
# app's default options), compressed from the FP16 IR as the app's Compress does.
INT4_VARIANTS = {
    "INT4-g32": Int4Options(group_size=32),
    "INT4-g64": Int4Options(group_size=64),
    "INT4-sym": Int4Options(sym=True),
    "INT4-r0.8": Int4Options(ratio=0.8),
}


def ir(shape: str, precision: str) -> Path:
    """The IR folder for a shape ('tiny' or '3b') and a precision or INT4 variant, built once."""
    dest = cache_dir() / f"{shape}-{precision}"
    if dest.exists():
        return dest
    if precision in INT4_VARIANTS:
        with staged_folder(dest) as out:
            compress_ir(ir(shape, "FP16"), out, Precision.INT4, INT4_VARIANTS[precision])
    else:
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
