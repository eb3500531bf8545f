"""Weight compression of an OpenVINO IR with NNCF, straight on the OpenVINO model (no torch).

Used by export (PyTorch -> FP16 IR -> INT8/INT4) and by "compress" of an installed FP16 IR.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from dolly_desktop.errors import DollyError
from dolly_desktop.models.folder import MODEL_BIN, MODEL_XML, Precision


@dataclass(frozen=True)
class Int4Options:
    """INT4 options as optimum-cli offers them. Defaults are optimum-cli's own."""

    sym: bool = False
    group_size: int = 128  # -1 = per channel
    ratio: float = 1.0  # share of layers in INT4; the rest stay INT8

    def __post_init__(self) -> None:
        if not 0.0 < self.ratio <= 1.0:
            raise DollyError(f"INT4 ratio must be above 0 and at most 1; got {self.ratio:g}.")
        if self.group_size != -1 and self.group_size < 1:
            raise DollyError(f"INT4 group size must be -1 or positive; got {self.group_size}.")


def compress_ir(
    src: Path, dst: Path, precision: Precision, int4: Int4Options | None = None
) -> None:
    """Write a compressed copy of the IR folder `src` into the existing folder `dst`."""
    import nncf
    import openvino as ov

    if precision is Precision.FP16:
        raise DollyError("FP16 is not a compression: choose INT8 or INT4.")
    model = ov.Core().read_model(src / MODEL_XML)
    if precision is Precision.INT8:
        kwargs: dict = dict(mode=nncf.CompressWeightsMode.INT8_ASYM)
    else:
        o = int4 or Int4Options()
        mode = nncf.CompressWeightsMode.INT4_SYM if o.sym else nncf.CompressWeightsMode.INT4_ASYM
        kwargs = dict(mode=mode, group_size=o.group_size, ratio=o.ratio)
    try:
        model = nncf.compress_weights(model, **kwargs)
    except Exception as e:  # nncf raises its own error types for unsupported layouts
        raise DollyError(f"NNCF could not compress the model: {e}") from e
    ov.save_model(model, dst / MODEL_XML, compress_to_fp16=False)
    for item in src.iterdir():
        if item.name not in (MODEL_XML, MODEL_BIN) and item.is_file():
            shutil.copy2(item, dst / item.name)
