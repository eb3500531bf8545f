"""The Dolly 2.0 models the app knows: where each variant comes from, its size and its needs.

Measured on this project's machines for dolly-v2-3b (see DESIGN.md); the 7b and 12b figures
are scaled from them by checkpoint size, so they are approximate (shown as "about").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dolly_desktop.errors import DollyError
from dolly_desktop.models.capacity import GB
from dolly_desktop.models.folder import Precision

CHECKPOINT = "PyTorch"  # the store's folder name for an original (to-export) checkpoint

# Weights on disk relative to FP16, from the 3b INT4 export (1.57 GB of 5.68 GB); INT8
# weight compression halves every matrix and keeps small scales beside them.
SIZE_FACTOR = {Precision.FP16: 1.0, Precision.INT8: 0.502, Precision.INT4: 1.57 / 5.68}
# Generating with 3b INT4 peaks at 3.2 GB RSS for a 1.57 GB model: weights plus ~1.65 GB of
# runtime, tokenizer and KV cache.
RUN_OVERHEAD = int(1.65 * GB)
# Exporting 3b (5.68 GB checkpoint) peaks at 7.6 GB RSS.
EXPORT_RAM_FACTOR = 7.6 / 5.68
TOKENIZER_BYTES = 6_000_000  # tokenizer.json plus the OpenVINO tokenizer pair


@dataclass(frozen=True)
class Variant:
    model: str
    precision: Precision
    repo_id: str | None  # a ready-made OpenVINO repo on the Hub; None: export it yourself
    download_bytes: int  # size of the IR folder: estimated unless exact_size
    run_ram_bytes: int  # approximate peak memory while generating
    exact_size: bool = False  # download_bytes came from the Hub (models/hub/catalog.py)

    @property
    def label(self) -> str:
        return f"{self.model}/{self.precision.value}"


@dataclass(frozen=True)
class CatalogModel:
    name: str  # also the store folder: dolly-v2-3b
    source_repo: str  # original PyTorch weights: databricks/dolly-v2-3b
    parameters: str  # for display: "2.8B"
    checkpoint_bytes: int  # pytorch_model.bin, bf16
    ready_made: dict[Precision, str] = field(default_factory=dict)

    @property
    def export_ram_bytes(self) -> int:
        return int(self.checkpoint_bytes * EXPORT_RAM_FACTOR)

    def variant(self, precision: Precision) -> Variant:
        size = int(self.checkpoint_bytes * SIZE_FACTOR[precision]) + TOKENIZER_BYTES
        return Variant(
            model=self.name,
            precision=precision,
            repo_id=self.ready_made.get(precision),
            download_bytes=size,
            run_ram_bytes=size + RUN_OVERHEAD,
        )

    @property
    def variants(self) -> list[Variant]:
        return [self.variant(p) for p in Precision]


def export_disk_bytes(fp16_bytes: int, precision: Precision) -> int:
    """Disk an export needs: the FP16 IR, plus the compressed copy made from it."""
    if precision is Precision.FP16:
        return fp16_bytes
    return fp16_bytes + compressed_bytes(fp16_bytes, precision)


def compressed_bytes(fp16_bytes: int, precision: Precision, ratio: float = 1.0) -> int:
    """Approximate size of an FP16 IR after weight compression (ratio: share of INT4 layers)."""
    if precision is Precision.INT4:
        factor = ratio * SIZE_FACTOR[Precision.INT4] + (1 - ratio) * SIZE_FACTOR[Precision.INT8]
    else:
        factor = SIZE_FACTOR[precision]
    return int(fp16_bytes * factor)


CATALOG: dict[str, CatalogModel] = {
    m.name: m
    for m in (
        CatalogModel(
            "dolly-v2-3b",
            "databricks/dolly-v2-3b",
            "2.8B",
            int(5.68 * GB),
            {
                Precision.INT4: "OpenVINO/dolly-v2-3b-int4-ov",
                Precision.INT8: "OpenVINO/dolly-v2-3b-int8-ov",
                Precision.FP16: "OpenVINO/dolly-v2-3b-fp16-ov",
            },
        ),
        CatalogModel(
            "dolly-v2-7b",
            "databricks/dolly-v2-7b",
            "6.9B",
            int(13.8 * GB),
            {Precision.FP16: "OpenVINO/dolly-v2-7b-fp16-ov"},
        ),
        CatalogModel(
            "dolly-v2-12b",
            "databricks/dolly-v2-12b",
            "12B",
            int(23.8 * GB),
            {Precision.INT8: "OpenVINO/dolly-v2-12b-int8-ov"},
        ),
    )
}


def get_model(name: str) -> CatalogModel:
    try:
        return CATALOG[name]
    except KeyError:
        raise DollyError(f"Unknown model {name!r}: choose one of {', '.join(CATALOG)}.") from None
