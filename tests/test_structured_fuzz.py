"""`response_format` under fuzzing (issue 23): schemas generated from the supported keywords,
and malformed variants of them, sent to a real `serve` (batching, its default) on the tiny
model at three max_tokens budgets.

Every answer is either 200 with JSON that validates against the schema (checked with
jsonschema) and closed by itself (finish_reason "stop": what is accepted always closes within
its budget), or 400 naming `response_format`. Never 500, and a plain request is answered
afterwards.
"""

from __future__ import annotations

import json
import math

import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving import json_schema_format, post_json

BUDGETS = (12, 40, 160)
NAMES = st.sampled_from(["a", "b", "name", "x y", "é", 'q"'])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-1000, 1000),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=6),
)
COUNTS = st.integers(0, 6)
# Values of the wrong kind for a keyword: each must be refused, never crash the server.
BAD = st.sampled_from(
    [-5, -1, 2**63, 1.5, "x", True, None, [], {}, [{}], [1], math.inf, -math.inf, math.nan]
)


def _maybe(draw, schema: dict, key: str, values: st.SearchStrategy) -> None:
    if draw(st.booleans()):
        schema[key] = draw(values)


@st.composite
def leaf(draw) -> object:
    kind = draw(st.sampled_from(["string", "integer", "number", "boolean", "null", "enum",
                                 "const", "free", "bool"]))  # fmt: skip
    if kind == "free":
        return {}
    if kind == "bool":
        return True
    if kind == "enum":
        s: dict = {"enum": draw(st.lists(SCALARS, min_size=1, max_size=5))}
        _maybe(draw, s, "type", st.sampled_from(["string", "integer", "number", "null"]))
        return s
    if kind == "const":
        return {"const": draw(SCALARS)}
    s = {"type": kind}
    if kind == "string":
        _maybe(draw, s, "minLength", COUNTS)
        _maybe(draw, s, "maxLength", st.one_of(COUNTS, st.just(2**63)))
    if kind in ("integer", "number"):
        bound = st.one_of(st.integers(-2000, 2000), st.floats(-100, 100, width=32))
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if draw(st.integers(0, 3)) == 0:
                s[key] = draw(bound)
    return s


def compound(children: st.SearchStrategy) -> st.SearchStrategy:
    @st.composite
    def build(draw) -> object:
        kind = draw(st.sampled_from(["object", "array", "anyOf", "oneOf", "allOf", "types"]))
        if kind == "object":
            props = draw(st.dictionaries(NAMES, children, max_size=3))
            s: dict = {"type": "object", "properties": props}
            if props and draw(st.booleans()):
                s["required"] = draw(st.lists(st.sampled_from(sorted(props)), unique=True))
            _maybe(draw, s, "additionalProperties", st.one_of(st.booleans(), children))
            _maybe(draw, s, "minProperties", COUNTS)
            _maybe(draw, s, "maxProperties", COUNTS)
            return s
        if kind == "array":
            s = {"type": "array", "items": draw(children)}
            _maybe(draw, s, "minItems", COUNTS)
            _maybe(draw, s, "maxItems", COUNTS)
            return s
        if kind == "types":
            kinds = st.sampled_from(["string", "integer", "number", "boolean", "null"])
            return {"type": draw(st.lists(kinds, min_size=1, max_size=3, unique=True))}
        branches = draw(st.lists(children, min_size=1, max_size=3))
        return {kind: branches[:1] if kind == "allOf" else branches}

    return build()


SCHEMAS = st.recursive(leaf(), compound, max_leaves=6)


@st.composite
def schemas(draw) -> object:
    """A schema from the supported keywords; sometimes behind a $ref; sometimes broken."""
    schema = draw(SCHEMAS)
    if draw(st.integers(0, 4)) == 0:
        schema = {"$defs": {"t": schema}, "$ref": "#/$defs/t"}
    if draw(st.integers(0, 3)) == 0:  # a malformed variant: a keyword of the wrong kind
        target = schema if isinstance(schema, dict) else {}
        key = draw(st.sampled_from(["type", "minLength", "maxItems", "minimum", "required",
                                    "enum", "anyOf", "$defs", "properties", "exclusiveMaximum",
                                    "additionalProperties", "$ref", "allOf", "const"]))  # fmt: skip
        schema = {**target, key: draw(BAD)}
    return schema


def valid_schema(schema: object) -> bool:
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError:
        return False
    return True


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(schema=schemas(), seed=st.integers(0, 2**31 - 1))
def test_every_response_format_answers_valid_json_or_400(server, schema, seed):
    for budget in BUDGETS:
        body = {"prompt": "Answer as JSON.", "max_tokens": budget, "seed": seed,
                "response_format": json_schema_format(schema)}  # fmt: skip
        r = post_json(f"{server.url}/completions", body)
        assert r.status_code in (200, 400), (r.status_code, r.text[:300], schema)
        if r.status_code == 400:
            assert r.json()["error"]["param"] == "response_format", r.text
            continue
        # Accepted: a schema jsonschema takes too, and an answer that closed and validates.
        assert valid_schema(schema), schema
        choice = r.json()["choices"][0]
        value = json.loads(choice["text"])
        jsonschema.Draft202012Validator(schema).validate(value)
        assert choice["finish_reason"] == "stop", (choice, schema, budget)


def test_the_server_answers_afterwards(server):
    """Runs after the fuzzing above (pytest keeps the file's order): alive, and answering."""
    assert server.proc.poll() is None, server.stderr()
    r = post_json(f"{server.url}/completions", {"prompt": "Hi", "max_tokens": 4})
    assert r.status_code == 200, r.text
