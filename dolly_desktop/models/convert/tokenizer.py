"""Make openvino_tokenizer.xml / openvino_detokenizer.xml from a folder's tokenizer files.

openvino-genai needs them; older Hub exports and our own exports start without them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from dolly_desktop.errors import DollyError
from dolly_desktop.models.folder import DETOKENIZER_XML, TOKENIZER_XML

log = logging.getLogger(__name__)


def convert_tokenizer_files(model_dir: Path) -> None:
    """Convert the HF tokenizer in `model_dir` and save the OpenVINO pair beside it."""
    import openvino as ov
    from openvino_tokenizers import convert_tokenizer
    from transformers import AutoTokenizer

    log.info("converting the tokenizer in %s to OpenVINO", model_dir)
    try:
        hf = AutoTokenizer.from_pretrained(str(model_dir))
        tok, detok = convert_tokenizer(hf, with_detokenizer=True, skip_special_tokens=True)
    except Exception as e:  # transformers/openvino-tokenizers raise many types
        raise DollyError(f"The tokenizer in {model_dir} could not be converted: {e}") from e
    for model, name in ((tok, TOKENIZER_XML), (detok, DETOKENIZER_XML)):
        # Save under a temporary name, then rename: a crash never leaves half a tokenizer.
        tmp = model_dir / f".{name}.tmp.xml"
        ov.save_model(model, tmp)
        os.replace(tmp.with_suffix(".bin"), (model_dir / name).with_suffix(".bin"))
        os.replace(tmp, model_dir / name)
