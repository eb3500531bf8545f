"""Which model: a `--model` argument as a folder or a store name, the best installed model this
machine can run, and the variant to recommend to download on a first start.

"Best" is the largest model (more parameters) that fits in memory, then the highest precision:
a 12b at INT4 answers better than a 3b at FP16, and FP16 better than INT4 of the same model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dolly_desktop.errors import DollyError
from dolly_desktop.models.capacity import DEFAULT_KEEP_FREE, available_memory_bytes, free_disk_bytes
from dolly_desktop.models.catalog import (
    CATALOG,
    RUN_OVERHEAD,
    SIZE_FACTOR,
    TOKENIZER_BYTES,
    Variant,
)
from dolly_desktop.models.hub.catalog import all_variants
from dolly_desktop.models.store import InstalledModel, Store

PRECISION_RANK = {"INT4": 0, "INT8": 1, "FP16": 2, "FP32": 3}
# Weights read per second while decoding, measured on this project's 2-core machines: 3b INT4
# (1.57 GB) decodes 7.6 tok/s on Sapphire Rapids and 16 on Zen 4 (docs/benchmarks.md). The
# lower figure keeps the promise on both.
DECODE_BYTES_PER_S = 12e9
MIN_TOK_S = 4.0  # slower than this, reading along becomes waiting


def run_ram_bytes(m: InstalledModel) -> int:
    """Memory to run an installed model: its weights plus the runtime (catalog.RUN_OVERHEAD)."""
    return m.weights_bytes + RUN_OVERHEAD


def _scale(m: InstalledModel) -> float:
    """The model's size as FP16 weights: compares a 12b INT4 with a 3b FP16."""
    factors = {"FP32": 2.0, **{p.value: f for p, f in SIZE_FACTOR.items()}}
    return m.weights_bytes / factors.get(m.variant, 1.0)


def best_installed(
    installed: Sequence[InstalledModel], ram: int | None = None
) -> InstalledModel | None:
    """The best runnable model that fits in `ram` (default: what is available now); if none
    fits, the smallest runnable one (a person can still try it)."""
    runnable = [m for m in installed if m.runnable]
    if not runnable:
        return None
    ram = available_memory_bytes() if ram is None else ram
    fitting = [m for m in runnable if ram is None or run_ram_bytes(m) <= ram]
    if not fitting:
        return min(runnable, key=run_ram_bytes)
    return max(
        fitting,
        key=lambda m: (
            round(_scale(m) / 1e8),  # same model within 100 MB
            PRECISION_RANK.get(m.variant, -1),
        ),
    )


def expected_tok_s(v: Variant) -> float:
    """Decode speed to expect on a CPU: it reads every weight once per token."""
    return DECODE_BYTES_PER_S / max(v.download_bytes - TOKENIZER_BYTES, 1)


def recommend(ram: int | None, free_disk: int, keep_free: int = DEFAULT_KEEP_FREE) -> Variant:
    """The ready-made variant to offer on a first start: the best (see module doc) that fits
    in memory and on disk and still answers at a readable pace (MIN_TOK_S): by memory alone a
    24 GB machine would get dolly-v2-12b INT8, about 1 token a second on two cores. The
    smallest one when nothing fits (the first-run panel then says why)."""
    ready = [v for v in all_variants() if v.repo_id]  # with what the Hub last said
    fitting = [
        v
        for v in ready
        if (ram is None or v.run_ram_bytes <= ram) and v.download_bytes + keep_free <= free_disk
    ]
    if not fitting:
        return min(ready, key=lambda v: v.run_ram_bytes)
    readable = [v for v in fitting if expected_tok_s(v) >= MIN_TOK_S]
    if not readable:
        return max(fitting, key=expected_tok_s)
    by_model = {name: i for i, name in enumerate(CATALOG)}  # catalog order: 3b, 7b, 12b
    return max(readable, key=lambda v: (by_model[v.model], PRECISION_RANK[v.precision.value]))


def recommend_here(store: Store) -> Variant:
    return recommend(available_memory_bytes(), free_disk_bytes(store.root))


def resolve_model(arg: str, store: Store | None = None) -> Path:
    """A model folder from `--model`: a folder path, `name/VARIANT` from the store, or `name`
    for its best installed variant. An unknown name gets the list of installed ones."""
    path = Path(arg).expanduser()
    if path.is_dir():
        return path
    store = store or Store()
    name, _, variant = arg.strip("/").partition("/")
    installed = [m for m in store.list() if m.runnable]
    matches = [m for m in installed if m.name == name and variant.upper() in ("", m.variant)]
    chosen = best_installed(matches) if matches else None
    if chosen is None:
        names = ", ".join(m.label for m in installed) or "none yet (see: dolly-desktop models)"
        raise DollyError(f"There is no folder or installed model called {arg}. Installed: {names}.")
    return chosen.path
