"""Export with the project's own code: layout, precision on disk, atomic install."""

from __future__ import annotations

import numpy as np
import pytest

from dolly_desktop.errors import DollyError
from dolly_desktop.models.convert.compress import Int4Options
from dolly_desktop.models.convert.export import export_checkpoint
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


# Teacher-forced agreement with FP16: the FP16 IR, computed exactly, continues each prompt
# greedily; that whole sequence is fed to each model once, and every continuation position's
# next-token logits are compared with FP16's: top-1 agreement and KL(FP16 || model), as
# bench/agreement.py does on the 3b shape. Exact f32 arithmetic and no dynamic quantization, so
# only the export differs. Measured on this tiny model (2026-11-29, AMD EPYC (Zen 4), OpenVINO
# 2026.4.1, nncf 3.4.0), 3 prompts x 48 tokens: INT8 95.8 % (138/144), KL 0.0010; INT4 51.4 %
# (74/144), KL 0.139. The tiny model's INT4 covers only its transformer layers (nncf keeps the
# embeddings and the output layer, 97 % of its weights, at INT8), and random weights give flat
# logits: hence INT4's low top-1 here (54 % on the 3b shape, docs/benchmarks.md).
# Floors: top-1 about 6 points under the measured, KL 15 % (INT4) to 3x (INT8) over it. Caught:
# INT4 with the embeddings and output layer in INT4 too (KL 0.224), INT8 exported as INT4,
# another checkpoint as the reference. Not caught on this model: INT4 sym (KL 0.153) or per
# channel (0.147); its layers are 128 wide, one group of 128 already.
AGREEMENT_FLOORS = {"INT8": (0.90, 0.003), "INT4": (0.45, 0.16)}  # (top-1 at least, KL at most)
AGREEMENT_PROMPTS = [
    "Who is Dolly?",
    "Give me recipe for pizza with pineapple",
    "Name 3 advantages to be a cat",
]
EXACT_IR = {
    "INFERENCE_PRECISION_HINT": "f32",
    "KV_CACHE_PRECISION": "f32",
    "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0,
}


def _next_token_logits(model_dir, ids: list[int]) -> np.ndarray:
    """The logits after every position of `ids`, in one stateless pass."""
    import openvino as ov

    model = ov.Core().compile_model(model_dir / "openvino_model.xml", "CPU", EXACT_IR)
    req = model.create_infer_request()
    n = len(ids)
    req.infer({
        "input_ids": np.array([ids], dtype=np.int64),
        "attention_mask": np.ones((1, n), dtype=np.int64),
        "position_ids": np.arange(n, dtype=np.int64)[None],
        "beam_idx": np.zeros(1, dtype=np.int32),
    })  # fmt: skip
    return req.get_tensor("logits").data[0].astype(np.float64)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def test_int8_int4_agree_with_fp16_above_floors(tiny_models, engine, report_figure):
    from dolly_desktop.generation.params import GenerationParams
    from dolly_desktop.generation.prompt import build_prompt

    assert engine.model_dir == tiny_models["FP16"].resolve()  # the reference: FP16, exact
    sequences = []  # (prompt ids, FP16's greedy continuation)
    for text in AGREEMENT_PROMPTS:
        ids = engine.encode(build_prompt(text))
        cont = engine.generate(text, GenerationParams(greedy=True, max_new_tokens=48)).token_ids
        assert len(cont) == 48
        sequences.append((ids, cont))
    # Rows predicting each continuation token, from FP16 and from each compressed model.
    ref = [_next_token_logits(tiny_models["FP16"], i + c[:-1])[len(i) - 1 :] for i, c in sequences]
    want = np.concatenate([c for _, c in sequences])
    assert (np.concatenate(ref).argmax(axis=1) == want).all()  # one pass = greedy decoding
    lp = _log_softmax(np.concatenate(ref))
    for precision, (min_top1, max_kl) in AGREEMENT_FLOORS.items():
        rows = np.concatenate(
            [_next_token_logits(tiny_models[precision], i + c[:-1])[len(i) - 1 :]
             for i, c in sequences]
        )  # fmt: skip
        top1 = float((rows.argmax(axis=1) == want).mean())
        lq = _log_softmax(rows)
        kl = float((np.exp(lp) * (lp - lq)).sum(axis=1).mean())
        report_figure(
            f"{precision} agreement with FP16 (teacher-forced, {len(want)} tokens)",
            f"top-1 {top1:.1%}, KL {kl:.4f} nats/token (floors {min_top1:.0%}, {max_kl})",
        )
        assert top1 >= min_top1, f"{precision} top-1 agreement {top1:.1%} < {min_top1:.0%}"
        assert kl <= max_kl, f"{precision} KL {kl:.4f} > {max_kl}"


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
