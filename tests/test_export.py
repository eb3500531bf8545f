"""Export with the project's own code: layout, precision on disk, atomic install."""

from __future__ import annotations

import pytest

from dolly_desktop.errors import DollyError
from dolly_desktop.models.compress import Int4Options
from dolly_desktop.models.export import export_checkpoint
from dolly_desktop.models.folder import Precision, inspect_model_dir


def _weight_types(model_dir) -> set[str]:
    import openvino as ov

    model = ov.Core().read_model(model_dir / "openvino_model.xml")
    return {
        op.get_element_type().get_type_name()
        for op in model.get_ops()
        if op.get_type_name() == "Constant" and len(op.shape) >= 2
    }


def test_each_precision_is_a_complete_model(tiny_models):
    sizes = {}
    for name, folder in tiny_models.items():
        info = inspect_model_dir(folder)
        assert info.has_ov_tokenizer and info.context_length == 2048
        sizes[name] = info.weights_bytes
    assert sizes["INT4"] < sizes["INT8"] < sizes["FP16"]
    assert "f16" in _weight_types(tiny_models["FP16"])
    assert "u8" in _weight_types(tiny_models["INT8"])
    assert "u4" in _weight_types(tiny_models["INT4"])


def test_int4_symmetric_option(tiny_checkpoint, tmp_path):
    out = export_checkpoint(
        tiny_checkpoint, tmp_path / "sym", Precision.INT4, Int4Options(sym=True, group_size=64)
    )
    assert "i4" in _weight_types(out)


def test_failed_export_leaves_nothing(tiny_checkpoint, tmp_path):
    stages = []

    def progress(stage: str, frac: float) -> None:
        stages.append(stage)
        if stage == "tokenizer":
            raise KeyboardInterrupt  # a cancel in the middle of the job

    with pytest.raises(KeyboardInterrupt):
        export_checkpoint(tiny_checkpoint, tmp_path / "out", Precision.INT8, progress=progress)
    assert stages == ["converting", "tokenizer"]
    assert list(tmp_path.iterdir()) == []


def test_existing_destination_is_kept(tiny_checkpoint, tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep")
    with pytest.raises(DollyError, match="already exists"):
        export_checkpoint(tiny_checkpoint, dest, Precision.FP16)
    assert [p.name for p in dest.iterdir()] == ["mine.txt"]


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(DollyError, match="not a PyTorch checkpoint"):
        export_checkpoint(tmp_path, tmp_path / "out", Precision.FP16)


@pytest.mark.parametrize("kwargs", [dict(ratio=0), dict(ratio=1.5), dict(group_size=0)])
def test_bad_int4_options(kwargs):
    with pytest.raises(DollyError, match="INT4"):
        Int4Options(**kwargs)


def test_unknown_precision():
    with pytest.raises(DollyError, match="FP16, INT8 or INT4"):
        Precision.parse("int3")
