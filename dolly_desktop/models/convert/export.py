"""Export a local PyTorch checkpoint to OpenVINO IR at FP16, INT8 or INT4 with optimum-intel.

Always with explicit compression parameters: optimum-intel otherwise compresses models over
1B parameters to INT8 on its own, and its INT4 default for dolly-v2-3b is data-aware and
needs a dataset download. Torch is imported here only, when an export runs.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from dolly_desktop.atomic import staged_folder
from dolly_desktop.errors import DollyError
from dolly_desktop.models.convert import export_support
from dolly_desktop.models.convert.compress import Int4Options, compress_ir
from dolly_desktop.models.convert.tokenizer import convert_tokenizer_files
from dolly_desktop.models.folder import Precision, inspect_model_dir, is_checkpoint

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]  # (stage, fraction done 0..1)


def export_checkpoint(
    src: Path,
    dest: Path,
    precision: Precision,
    int4: Int4Options | None = None,
    progress: Progress | None = None,
) -> Path:
    """Export `src` to a new folder `dest`, installed atomically; return `dest`."""
    report = progress or (lambda stage, frac: None)
    src = Path(src).expanduser()
    if not is_checkpoint(src):
        raise DollyError(f"{src} is not a PyTorch checkpoint folder (config.json and weights).")
    try:
        from optimum.exporters.openvino import main_export
        from optimum.intel import OVConfig
    except ImportError as e:
        raise DollyError(export_support.how_to_install()) from e

    with staged_folder(dest, check=inspect_model_dir) as out:
        # Named like staging, so remove_stale_staging() clears it if this process is killed.
        fp16_prefix = f".{dest.name}.partial-fp16-"
        with tempfile.TemporaryDirectory(prefix=fp16_prefix, dir=out.parent) as tmp:
            fp16_dir = out if precision is Precision.FP16 else Path(tmp)
            report("converting", 0.05)
            # dtype fp16 with no quantization_config: optimum applies no compression of its own.
            main_export(
                model_name_or_path=str(src),
                output=fp16_dir,
                task="text-generation-with-past",
                ov_config=OVConfig(dtype="fp16"),
                convert_tokenizer=False,
                library_name="transformers",
                local_files_only=True,
            )
            _copy_tokenizer_files(src, fp16_dir)
            report("tokenizer", 0.6)
            convert_tokenizer_files(fp16_dir)
            if precision is not Precision.FP16:
                report("compressing", 0.7)
                compress_ir(fp16_dir, out, precision, int4)
        report("checking", 0.95)
    report("done", 1.0)
    return dest


def _copy_tokenizer_files(src: Path, dst: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).is_file() and not (dst / name).exists():
            shutil.copy2(src / name, dst / name)
