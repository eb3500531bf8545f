"""Structured output: answers that follow a JSON Schema, even from a random-weight model.

The tiny model's weights are random, so left to itself it never writes JSON; every answer
here is JSON only because the grammar (generation/structured.py) allows nothing else, and it
closes within max_tokens only because the grammar's bounds fit the budget.
"""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from dolly_desktop.generation.engine import StopReason
from dolly_desktop.generation.params import GenerationParams
from dolly_desktop.generation.structured import SchemaError, json_grammar, longest_answer

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "ignored, as a validator does"},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "height": {"type": "number", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "member": {"type": "boolean"},
        "kind": {"enum": ["a", "b", None]},
        "note": {"type": ["string", "null"]},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
NESTED = {  # what pydantic's model_json_schema() writes: $defs and $ref
    "$defs": {
        "Point": {
            "type": "object",
            "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
            "required": ["x", "y"],
        }
    },
    "type": "object",
    "properties": {
        "points": {"type": "array", "items": {"$ref": "#/$defs/Point"}, "minItems": 1},
        "label": {"anyOf": [{"type": "string", "maxLength": 5}, {"type": "null"}]},
    },
    "required": ["points"],
}
ALL_OPTIONAL = {"type": "object", "properties": {"a": {"type": "string"}, "b": {}}}
ANY_OBJECT = None  # json_object
SCHEMAS = {"person": PERSON, "nested": NESTED, "optional": ALL_OPTIONAL, "object": ANY_OBJECT}


def check(text: str, schema: dict | None) -> object:
    value = json.loads(text)
    jsonschema.validate(value, schema if schema is not None else {"type": "object"})
    return value


@pytest.mark.parametrize("name", SCHEMAS)
@pytest.mark.parametrize("budget", [32, 64, 256])
def test_every_answer_is_valid_json_for_its_schema(engine, name, budget):
    schema = SCHEMAS[name]
    grammar = json_grammar(schema, budget)
    for seed in (None, 1, 2, 3):  # greedy, then sampled
        params = GenerationParams(greedy=seed is None, seed=seed, max_new_tokens=budget)
        result = engine.generate("Describe it as JSON.", params, grammar=grammar)
        check(result.text, schema)
        # It closed by itself (the end of text after the last brace), not at max_tokens.
        assert result.stop_reason is StopReason.END, (name, budget, seed, result.text)


def test_the_longest_answer_fits_the_budget():
    for schema in SCHEMAS.values():
        for budget in (32, 64, 256, 1000):
            longest = longest_answer(schema, budget)
            assert longest <= budget - 1, (schema, budget, longest)
    # More room, roomier bounds: strings are not cut to nothing when they need not be.
    assert longest_answer(PERSON, 1000) > 4 * longest_answer(PERSON, 40)


def test_a_schema_that_cannot_fit_its_budget_is_refused():
    schema = {"type": "object", "properties": {"s": {"type": "string", "minLength": 50}},
              "required": ["s"]}  # fmt: skip
    with pytest.raises(SchemaError, match="raise max_tokens"):
        json_grammar(schema, 20)  # its own minimum: it would be cut at max_tokens
    assert longest_answer(schema, 250) <= 249
    with pytest.raises(SchemaError, match="raise max_tokens"):
        json_grammar(None, 2)  # json_object: "{}" and the end of text need 3
    assert json_grammar(None, 3)


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "string", "pattern": "^a+$"}, "'pattern'"),
        (
            {"type": "object", "properties": {"n": {"type": "number", "multipleOf": 2}}},
            "'multipleOf' (at the top.n)",
        ),
        (
            {
                "$defs": {"T": {"type": "array", "items": {"$ref": "#/$defs/T"}}},
                "$ref": "#/$defs/T",
            },
            "recursive",
        ),
        ({"$ref": "#/$defs/Missing"}, "names no definition"),
        ({"type": "integer", "minimum": 5}, "Integer bounds"),
        ({"type": "text"}, "not a JSON Schema type"),
        ({"not": {"type": "null"}}, "'not'"),
    ],
)
def test_what_cannot_be_guaranteed_is_refused_in_one_sentence(schema, words):
    with pytest.raises(SchemaError) as e:
        json_grammar(schema, 100)
    assert words in str(e.value) and "\n" not in str(e.value)


# --- through serve, with the openai package (the batching engine: serve's default)


def test_chat_json_schema_answers_validate(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    for seed in (1, 2):
        r = client.chat.completions.create(
            model="dolly",
            messages=[{"role": "user", "content": "Describe a person as JSON."}],
            response_format=fmt,  # type: ignore[arg-type]
            max_tokens=48,
            seed=seed,
        )
        check(r.choices[0].message.content or "", PERSON)
        assert r.choices[0].finish_reason == "stop"


def test_streamed_json_object_parses(client):
    stream = client.completions.create(
        model="dolly",
        prompt="List three colours as JSON.",
        extra_body={"response_format": {"type": "json_object"}},  # not in the completions API
        max_tokens=30,
        temperature=0,
        stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert isinstance(check(text, None), dict)
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    ("fmt", "words"),
    [
        (
            {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "a"}},
            },
            "'pattern'",
        ),
        ({"type": "xml"}, "response_format must be"),
        ({"type": "json_schema"}, "response_format must be"),
    ],
)
def test_a_bad_response_format_gets_400_naming_it(client, fmt, words):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="dolly",
            messages=[{"role": "user", "content": "Hi"}],
            response_format=fmt,  # type: ignore[arg-type]
            max_tokens=8,
        )
    error = e.value.body
    assert isinstance(error, dict) and error.get("param") == "response_format"
    assert words in str(error.get("message"))
