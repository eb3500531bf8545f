"""Dolly's template and the generation parameters, checked against Dolly's own tokenizer."""

from __future__ import annotations

import pytest

from dolly_desktop.errors import DollyError
from dolly_desktop.generation.params import RANGES, GenerationParams
from dolly_desktop.generation.prompt import (
    END_KEY,
    INTRO_BLURB,
    build_prompt,
    clean_response,
    find_end_token_id,
)


def test_template_text_is_dollys():
    p = build_prompt("  Who is Dolly?\n")
    assert p == (f"{INTRO_BLURB}\n\n### Instruction:\nWho is Dolly?\n\n### Response:\n")


def test_template_yields_dollys_special_ids(engine):
    ids = engine.encode(build_prompt("Who is Dolly?"))
    assert ids.count(50278) == 1 and ids.count(50279) == 1
    assert ids.index(50278) < ids.index(50279)
    # `### Response:` is followed only by the newline, as in training.
    assert ids[ids.index(50279) + 1 :] == engine.encode("\n")
    assert engine.end_id == 50277
    assert engine.encode(END_KEY) == [50277]


def test_ov_tokenizer_matches_hf_tokenizer(engine, tiny_fp16):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tiny_fp16))
    for text in [build_prompt("Name 3 advantages to be a cat"), "héllo wörld 日本 ### End"]:
        assert engine.encode(text) == hf(text)["input_ids"]


def test_end_token_falls_back_to_eos(caplog):
    assert find_end_token_id(lambda s: [1, 2, 3], eos_token_id=0) == 0
    assert "EOS" in caplog.text


@pytest.mark.parametrize(
    "text, cleaned",
    [
        ("  Hello there.<|endoftext|>", "Hello there."),
        ("Answer.\n\n### End\nmore", "Answer."),
        ("Answer.\n### Instruction:\nnext", "Answer."),
        ("plain", "plain"),
    ],
)
def test_clean_response(text, cleaned):
    assert clean_response(text) == cleaned


@pytest.mark.parametrize("instruction", ["", "   \n\t", "x" * 20_001])
def test_bad_instruction_is_refused(instruction):
    with pytest.raises(DollyError):
        build_prompt(instruction)


def test_defaults_are_the_notebooks():
    p = GenerationParams()
    assert (p.max_new_tokens, p.top_p, p.top_k, p.temperature) == (256, 0.92, 0, 0.8)


@pytest.mark.parametrize(
    "field, bad",
    [
        ("max_new_tokens", 0),
        ("max_new_tokens", 1001),
        ("max_new_tokens", 2.5),
        ("temperature", 0.05),
        ("temperature", 5.1),
        ("top_p", 0.01),
        ("top_p", 1.5),
        ("top_k", -1),
        ("top_k", 51),
        ("repetition_penalty", 0.5),
        ("seed", -1),
        ("temperature", "hot"),
        ("top_k", True),
    ],
)
def test_invalid_parameter_names_field_and_range(field, bad):
    with pytest.raises(DollyError) as e:
        GenerationParams(**{field: bad})
    r = RANGES[field]
    assert r.label in str(e.value)
    for bound in (r.low, r.high):
        assert (str(bound) if isinstance(bound, int) else f"{bound:g}") in str(e.value)


def test_params_round_trip_and_unknown_key():
    p = GenerationParams(max_new_tokens=5, greedy=True, seed=7)
    assert GenerationParams.from_dict(p.to_dict()) == p
    with pytest.raises(DollyError, match="unknown generation parameter: colour"):
        GenerationParams.from_dict({"colour": 1})
