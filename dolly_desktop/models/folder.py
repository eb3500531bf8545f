"""What a model folder holds, and a clear sentence when it is not a usable OpenVINO model."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from dolly_desktop.errors import DollyError

MODEL_XML = "openvino_model.xml"
MODEL_BIN = "openvino_model.bin"
TOKENIZER_XML = "openvino_tokenizer.xml"
DETOKENIZER_XML = "openvino_detokenizer.xml"
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
CHECKPOINT_PATTERNS = ("pytorch_model*.bin", "model*.safetensors")
DEFAULT_CONTEXT = 2048

_CONST_DATA = re.compile(rb'offset="(\d+)"[^>]*?size="(\d+)"')


class Precision(str, Enum):
    FP16 = "FP16"
    INT8 = "INT8"
    INT4 = "INT4"

    @classmethod
    def parse(cls, text: str) -> Precision:
        try:
            return cls(text.upper())
        except ValueError:
            raise DollyError(f"Unknown precision {text!r}: choose FP16, INT8 or INT4.") from None


@dataclass(frozen=True)
class ModelDir:
    path: Path
    context_length: int
    has_ov_tokenizer: bool
    weights_bytes: int


def is_checkpoint(path: Path) -> bool:
    """A PyTorch/safetensors checkpoint folder (something to export, not to run)."""
    return (path / "config.json").is_file() and any(any(path.glob(p)) for p in CHECKPOINT_PATTERNS)


def read_config(path: Path) -> dict:
    try:
        return json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def inspect_model_dir(path: Path) -> ModelDir:
    """Check that `path` is an OpenVINO IR folder whose weights file is whole."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DollyError(f"There is no folder at {path}.")
    if not path.is_dir():
        raise DollyError(f"{path} is a file, not a model folder.")
    xml, bin_ = path / MODEL_XML, path / MODEL_BIN
    if not xml.is_file():
        if is_checkpoint(path):
            raise DollyError(
                f"{path} holds a PyTorch checkpoint, not an OpenVINO model: "
                "export it first (dolly-desktop models export)."
            )
        raise DollyError(f"{path} is not an OpenVINO model folder (no {MODEL_XML}).")
    if not bin_.is_file():
        raise DollyError(f"{path} has no {MODEL_BIN}: download or export the model again.")
    needed = _bytes_needed(xml)
    have = bin_.stat().st_size
    if have < needed:
        raise DollyError(
            f"{MODEL_BIN} in {path} is truncated ({have:,} of {needed:,} bytes): "
            "download or export the model again."
        )
    has_tok = (path / TOKENIZER_XML).is_file() and (path / DETOKENIZER_XML).is_file()
    if not has_tok and not all((path / f).is_file() for f in HF_TOKENIZER_FILES):
        raise DollyError(f"{path} has neither an OpenVINO tokenizer nor tokenizer.json.")
    ctx = int(read_config(path).get("max_position_embeddings") or DEFAULT_CONTEXT)
    return ModelDir(path=path, context_length=ctx, has_ov_tokenizer=has_tok, weights_bytes=have)


def _bytes_needed(xml: Path) -> int:
    """The end of the last constant the IR reads from its .bin (0 if it cannot tell)."""
    try:
        data = xml.read_bytes()
    except OSError as e:
        raise DollyError(f"{xml} cannot be read: {e.strerror}.") from e
    return max((int(o) + int(s) for o, s in _CONST_DATA.findall(data)), default=0)
