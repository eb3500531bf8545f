"""Structured output: answers that follow a JSON Schema, even from a random-weight model.

The tiny model's weights are random, so left to itself it never writes JSON; every answer
here is JSON only because the grammar (generation/structured.py) allows nothing else, and it
closes within max_tokens only because the grammar's bounds fit the budget.
"""

from __future__ import annotations

import concurrent.futures
import json
import time

import httpx
import jsonschema
import openai
import pytest
from serving import json_schema_format, post_json

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


# --- hostile and malformed schemas (issue 23): refused with 400 before they reach genai


def doubling(n: int, leaf: dict) -> dict:
    """Definitions that each refer twice to the next, `n` deep: 2**n leaves once expanded
    (n = 14 took xgrammar 34 s and 2.2 GB; issue 23)."""
    obj = {
        f"d{i}": {
            "type": "object",
            "properties": {"a": {"$ref": f"#/$defs/d{i + 1}"}, "b": {"$ref": f"#/$defs/d{i + 1}"}},
            "required": ["a", "b"],
        }
        for i in range(n)
    }
    return {"$defs": {**obj, f"d{n}": leaf}, "$ref": "#/$defs/d0"}


def ref_chain(n: int) -> dict:
    defs: dict = {f"r{i}": {"$ref": f"#/$defs/r{i + 1}"} for i in range(n)}
    defs[f"r{n}"] = {"type": "null"}
    return {"$defs": defs, "$ref": "#/$defs/r0"}


MALFORMED = {
    "negative minLength": {"type": "string", "minLength": -5},
    "huge minLength": {"type": "string", "minLength": 2**63},
    "$defs a list": {"$defs": [{"type": "null"}], "$ref": "#/$defs/0"},
    "$defs a string": {"$defs": "x", "$ref": "#/$defs/x"},
    "type []": {"type": []},
    "anyOf []": {"anyOf": []},
    "oneOf not a list": {"oneOf": {"type": "null"}},
    "allOf a number": {"allOf": 3},
    "required [{}]": {"type": "object", "required": [{}]},
    "required [1]": {"type": "object", "required": [1]},
    "minProperties x": {"type": "object", "minProperties": "x"},
    "maxItems true": {"type": "array", "maxItems": True},
    "minimum Infinity": {"type": "integer", "minimum": float("inf")},
    "minimum NaN": {"type": "number", "minimum": float("nan")},
    "exclusiveMinimum a": {"type": "integer", "exclusiveMinimum": "a"},
    "const NaN": {"const": float("nan")},
    "additionalProperties 3": {"type": "object", "additionalProperties": 3},
    "3000-long $ref chain": ref_chain(3000),
    "600-long $ref chain": ref_chain(600),
    "doubling 14 deep": doubling(14, {"type": "boolean"}),
    "100,000-value enum": {"enum": list(range(100_000))},
    "20,000-string enum": {"enum": [f"s{i}" for i in range(20_000)]},
    "50 integer ranges": {
        "type": "object",
        "properties": {
            f"p{i}": {"type": "integer", "minimum": 0, "maximum": 999} for i in range(50)
        },
    },
}
_deep: dict = {}
for _ in range(40):
    _deep = {"type": "array", "items": _deep}
MALFORMED["items nested 40 deep"] = _deep

# What the grammar cannot hold, beside what it can: refused, naming the keyword.
UNHELD = [
    ({"type": "object", "required": ["a"], "anyOf": [{"type": "object"}]}, "'required' beside"),
    ({"$ref": "#/$defs/a", "$defs": {"a": {}}, "minLength": 1}, "'minLength' beside '$ref'"),
    ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "oneOf"),
    ({"oneOf": [{"type": "object"}, {"type": "object", "required": ["a"]}]}, "oneOf"),
    ({"enum": ["a", 1], "minLength": 2}, "'minLength' beside 'enum'"),
    ({"type": "object", "properties": {"a": {}, "b": {}}, "maxProperties": 1}, "maxProperties"),
    ({"type": "number", "minimum": 0.5, "maximum": 0.7}, "Number bounds"),
    ({"type": "object", "required": ["x"], "additionalProperties": False}, "required 'x'"),
]

# Accepted, and every answer must validate (each once answered invalid JSON; issue 23).
HELD = {
    "additionalProperties false": {"type": "object", "additionalProperties": False},
    "exclusiveMaximum 0": {
        "type": "object",
        "properties": {"x": {"type": "number", "exclusiveMaximum": 0}},
        "required": ["x"],
    },
    "integer exclusive bounds": {
        "type": "integer",
        "exclusiveMinimum": 0.5,
        "exclusiveMaximum": 3,
    },
    "disjoint oneOf": {
        "oneOf": [{"type": "integer"}, {"type": "string", "maxLength": 3}, {"const": None}]
    },
    "enum of a type": {"type": "string", "enum": ["a", 1, "b", None]},
    "huge maxLength": {"type": "string", "maxLength": 2**63},
    "values of a free object": {"type": "object", "additionalProperties": {"type": "boolean"}},
    "required beside additionalProperties": {
        "type": "object",
        "required": ["k"],
        "additionalProperties": {"type": "null"},
    },
}


# Without a type, each keyword restricts only its own type's values (the fuzzer found
# {"exclusiveMaximum": -5} answered 394.79). Each of these rules out most of a free answer.
UNTYPED = {
    "every type restricted": {
        "exclusiveMaximum": -5, "maxLength": 0, "maxItems": 0, "maxProperties": 0
    },
    "bounds no number can meet": {
        "minimum": 0.5, "maximum": 0.7, "minLength": 1, "maxLength": 1, "required": ["k"],
        "minItems": 1,
    },
    "lengths no string can meet": {
        "minLength": 3, "maxLength": 1, "maximum": -2, "additionalProperties": False,
        "maxItems": 1,
    },
}  # fmt: skip


@pytest.mark.parametrize("name", UNTYPED)
def test_untyped_keywords_hold_their_own_types(engine, name):
    schema = UNTYPED[name]
    grammar = json_grammar(schema, 40)
    for seed in range(8):
        params = GenerationParams(greedy=False, seed=seed, max_new_tokens=40)
        result = engine.generate("Answer as JSON.", params, grammar=grammar)
        check(result.text, schema)
        assert result.stop_reason is StopReason.END


def test_limits_still_refuse_an_untyped_schema():
    # A type it cannot hold is left out of an untyped schema; a limit refuses the schema.
    schema = {"$defs": ref_chain(600)["$defs"], "required": ["a"],
              "additionalProperties": {"$ref": "#/$defs/r0"}}  # fmt: skip
    with pytest.raises(SchemaError, match="nests deeper"):
        json_grammar(schema, 256)


@pytest.mark.parametrize("name", MALFORMED)
def test_a_malformed_or_unbounded_schema_is_refused_in_one_sentence(name):
    with pytest.raises(SchemaError) as e:
        json_grammar(MALFORMED[name], 256)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("schema", "words"), UNHELD)
def test_a_keyword_the_grammar_cannot_hold_is_named(schema, words):
    with pytest.raises(SchemaError) as e:
        json_grammar(schema, 256)
    assert words in str(e.value), str(e.value)


@pytest.mark.parametrize("name", HELD)
def test_held_schemas_answer_valid_json(engine, name):
    schema = HELD[name]
    grammar = json_grammar(schema, 40)
    for seed in (None, 1, 2, 3):
        params = GenerationParams(greedy=seed is None, seed=seed, max_new_tokens=40)
        result = engine.generate("Answer as JSON.", params, grammar=grammar)
        check(result.text, schema)
        assert result.stop_reason is StopReason.END


def post(server, body: dict) -> httpx.Response:
    return post_json(f"{server.url}/completions", body)


def assert_answers_plainly(server) -> None:
    r = post(server, {"prompt": "Who is Dolly?", "max_tokens": 8})
    assert r.status_code == 200, r.text
    assert httpx.get(f"{server.url}/models", timeout=5).status_code == 200


def test_poison_schemas_get_400_and_the_next_plain_request_200(server):
    """Each once got 500, and the first one (minLength -5) made every later request 500 on the
    batching server (the default) until it was restarted."""
    for name, schema in MALFORMED.items():
        body = {"prompt": "x", "max_tokens": 8, "response_format": json_schema_format(schema)}
        r = post(server, body)
        assert r.status_code == 400 and r.json()["error"]["param"] == "response_format", (
            name, r.status_code, r.text[:300]
        )  # fmt: skip
        assert_answers_plainly(server)
    assert server.proc.poll() is None


def test_json_object_needs_room_to_close(server):
    """max_tokens 1 once answered `{`: now refused; 3 is enough for `{}`."""
    fmt = {"type": "json_object"}
    r = post(server, {"prompt": "x", "max_tokens": 1, "response_format": fmt})
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"
    assert "max_tokens" in r.json()["error"]["message"]
    r = post(server, {"prompt": "x", "max_tokens": 3, "response_format": fmt})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert json.loads(choice["text"]) == {} and choice["finish_reason"] == "stop"


def test_held_schemas_validate_through_serve(server):
    for name, schema in HELD.items():
        for seed in (1, 2):
            body = {"prompt": "JSON please.", "max_tokens": 40, "seed": seed,
                    "response_format": json_schema_format(schema)}  # fmt: skip
            r = post(server, body)
            assert r.status_code == 200, (name, r.text)
            choice = r.json()["choices"][0]
            check(choice["text"], schema)
            assert choice["finish_reason"] == "stop", (name, choice)


def test_models_answers_within_100_ms_while_a_grammar_builds(server):
    """Building a large schema's grammar takes a while (here ~0.5 s over every rung of the
    ladder, before it is refused for its budget): on a worker thread, not the event loop."""
    schema = doubling(8, {"type": "string", "minLength": 1})
    body = {"prompt": "x", "max_tokens": 8, "response_format": json_schema_format(schema)}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(post, server, body)
        worst, polls = 0.0, 0
        with httpx.Client(timeout=10) as c:
            c.get(f"{server.url}/models")  # the connection is open before timing starts
            while not answer.done():
                t0 = time.perf_counter()
                assert c.get(f"{server.url}/models").status_code == 200
                worst, polls = max(worst, time.perf_counter() - t0), polls + 1
        r = answer.result()
    # Refused for its budget, or on a busy machine for the build's time limit (MAX_BUILD_S).
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format", r.text
    assert polls >= 3, polls  # the build did take a while
    assert worst < 0.1, f"/v1/models took {worst * 1000:.0f} ms"


# --- the batching engine: a request that fails inside a batch step fails alone


@pytest.fixture(scope="module")
def batching(tiny_models):
    from dolly_desktop.generation.engines.batching import BatchingEngine

    engine = BatchingEngine(tiny_models["INT4"])
    yield engine
    engine.close()


BAD_EBNF = 'root ::= "\\"" char{-5,128} "\\""\nchar ::= [a-z]\n'  # genai fails in step()


def test_a_grammar_that_fails_in_a_batch_step_fails_only_that_step(batching):
    from dolly_desktop.errors import DollyError

    plain = GenerationParams(greedy=True, max_new_tokens=8)
    before = batching.generate("Who is Dolly?", plain).text
    with pytest.raises(DollyError, match="EBNF"):
        batching.generate("x", plain, grammar=BAD_EBNF)
    assert batching.generate("Who is Dolly?", plain).text == before
    # With others running: every request of the failed step ends (none hangs), and then the
    # batch answers again, the same answer.
    long = GenerationParams(greedy=True, max_new_tokens=400)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        running = [pool.submit(batching.generate, f"Story {i}", long) for i in range(2)]
        time.sleep(0.3)
        bad = pool.submit(batching.generate, "x", plain, grammar=BAD_EBNF)
        with pytest.raises(DollyError):
            bad.result(timeout=60)
        for f in running:
            f.exception(timeout=60)  # finished one way or the other, within a minute
    assert batching.generate("Who is Dolly?", plain).text == before
