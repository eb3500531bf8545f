"""Structured output: a JSON Schema (or "any JSON object") as a grammar the answer must follow.

The grammar is xgrammar's EBNF, which openvino-genai applies while decoding: at each step only
tokens that keep the answer inside the grammar can be chosen, and once it is complete only the
end of text can.

Why a converter of our own: openvino-genai's `json_schema` lets the model write any amount of
whitespace between JSON tokens (xgrammar's `max_whitespace_cnt` is not exposed), and a model
that does not write JSON well (a random one in the tests; Dolly, which was not tuned for it)
fills max_tokens with blanks and never closes the object. outlines-core's schema regex leaves
keys, numbers and free-form objects unbounded; xgrammar's own Python package needs torch.

So this grammar is compact (no whitespace) and everything has a bound: strings, digits, lists
and free-form objects. The bounds are the schema's own where it gives them; the others are
chosen, as generous as the token budget allows, so that the longest answer the grammar admits
still fits: the answer always closes, so it parses and validates against the schema. A
tighter answer than the schema requires is still a valid one.

Supported: type (one or a list), properties, required, items, min/maxItems, min/maxLength,
min/maxProperties on free-form objects, enum, const, anyOf, oneOf, allOf of one schema, $ref
into $defs/definitions, integer ranges of up to 1,000 values or a minimum of 0 or 1, number
with a minimum of 0. Annotations (title, description, default, format, ...) are ignored, as a
validator does by default. Anything else that restricts values is refused in one sentence.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from dolly_desktop.errors import DollyError

# Worst-case bytes per string character: a non-ASCII character is up to 4 bytes of UTF-8, and
# the tokenizer may spend a token on each byte (every token is at least one byte).
BYTES_PER_CHAR = 4
FRACTION_DIGITS = 3
FREE_DEPTH = 2  # nesting of free-form values (json_object): an object in an object at most
MAX_ENUMERATED = 1000  # integer ranges up to this many values are listed as alternatives


@dataclass(frozen=True)
class Bounds:
    chars: int  # per string without maxLength
    items: int  # per list without maxItems, members per free-form object
    digits: int  # before the decimal point
    optional: bool  # whether optional properties may appear


# From generous to tight; the first whose longest answer fits the budget is used.
LADDER = [
    *(Bounds(c, i, 6, True) for c, i in [(128, 8), (64, 8), (64, 4), (32, 4), (16, 4), (16, 2)]),
    *(Bounds(c, i, d, True) for c, i, d in [(8, 2, 4), (4, 2, 3), (4, 1, 2)]),
    *(
        Bounds(c, i, d, False)
        for c, i, d in [(4, 1, 2), (2, 1, 1), (1, 1, 1), (0, 1, 1), (0, 0, 1)]
    ),
]

IGNORED = {
    "title", "description", "default", "examples", "$schema", "$id", "$comment", "format",
    "deprecated", "readOnly", "writeOnly", "additionalProperties", "$defs", "definitions",
    "contentEncoding", "contentMediaType", "strict",
}  # fmt: skip
HANDLED = {
    "type", "properties", "required", "items", "minItems", "maxItems", "minLength",
    "maxLength", "minProperties", "maxProperties", "enum", "const", "anyOf", "oneOf", "allOf",
    "$ref", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
}  # fmt: skip
CHAR = r'[^"\\\x00-\x1f] | "\\" ["\\/bfnrt]'


class SchemaError(DollyError):
    """The schema asks for something this grammar cannot guarantee."""


@dataclass(frozen=True)
class Expr:
    text: str  # EBNF
    size: int  # the most bytes it can produce


def literal(value: Any) -> Expr:
    """A JSON value written out compactly, as an EBNF string."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=True)
    return Expr('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"', len(text))


def alternatives(options: list[Expr]) -> Expr:
    if len(options) == 1:
        return options[0]
    return Expr("(" + " | ".join(o.text for o in options) + ")", max(o.size for o in options))


def sequence(parts: list[Expr]) -> Expr:
    return Expr("(" + " ".join(p.text for p in parts) + ")", sum(p.size for p in parts))


def repeat(item: Expr, low: int, high: int, sep: str = "") -> Expr:
    """`low` to `high` items, separated by `sep` (a literal)."""
    if high == 0:
        return Expr('""', 0)
    s = f'"{sep}"' if sep else ""  # a comma: nothing to escape
    sep_size = len(sep)
    first = item.text
    rest = f"({s} {item.text})" if sep else item.text
    more_low, more_high = max(low - 1, 0), high - 1
    tail = f"{rest}{{{more_low},{more_high}}}" if more_high > 0 else ""
    body = f"({first} {tail})" if tail else f"({first})"
    size = high * item.size + (high - 1) * sep_size
    return Expr(body if low >= 1 else f"{body}?", size)


class _Builder:
    def __init__(self, root: dict[str, Any], bounds: Bounds) -> None:
        self.root = root
        self.chars = bounds.chars
        self.items = bounds.items
        self.bounds = bounds
        self.rules: dict[str, str] = {}
        self.refs: list[str] = []  # $refs being expanded: a cycle is refused

    def grammar(self, top: Expr) -> str:
        lines = [f"root ::= {top.text}", f"char ::= {CHAR}"]
        return "\n".join(lines + [f"{k} ::= {v}" for k, v in self.rules.items()]) + "\n"

    def value(self, schema: Any, where: str) -> Expr:
        if schema is True or schema == {}:
            return self.free(FREE_DEPTH, where)
        if not isinstance(schema, dict):
            raise SchemaError(f"The schema at {where} must be an object.")
        unknown = sorted(set(schema) - HANDLED - IGNORED)
        if unknown:
            raise SchemaError(f"The schema keyword {unknown[0]!r} (at {where}) is not supported.")
        if "$ref" in schema:
            return self.ref(schema["$ref"], where)
        if "const" in schema:
            return literal(schema["const"])
        if "enum" in schema:
            if not isinstance(schema["enum"], list) or not schema["enum"]:
                raise SchemaError(f"enum (at {where}) must be a non-empty list.")
            return alternatives([literal(v) for v in schema["enum"]])
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return alternatives(
                    [self.value(s, f"{where}.{key}[{i}]") for i, s in enumerate(schema[key])]
                )
        if "allOf" in schema:
            if len(schema["allOf"]) != 1:
                raise SchemaError(f"allOf (at {where}) must hold one schema.")
            return self.value(schema["allOf"][0], f"{where}.allOf[0]")
        kinds = schema.get("type")
        if kinds is None:
            kinds = (
                "object" if "properties" in schema
                else "array" if "items" in schema
                else None
            )  # fmt: skip
            if kinds is None:
                return self.free(FREE_DEPTH, where)
        if isinstance(kinds, list):
            return alternatives([self.typed(k, schema, where) for k in kinds])
        return self.typed(kinds, schema, where)

    def typed(self, kind: str, schema: dict[str, Any], where: str) -> Expr:
        if kind == "object":
            return self.obj(schema, where)
        if kind == "array":
            return self.array(schema, where)
        if kind == "string":
            return self.string(schema.get("minLength", 0), schema.get("maxLength"), where)
        if kind == "integer":
            return self.integer(schema, where)
        if kind == "number":
            return self.number(schema, where)
        if kind == "boolean":
            return Expr('("true" | "false")', 5)
        if kind == "null":
            return Expr('"null"', 4)
        raise SchemaError(f"The type {kind!r} (at {where}) is not a JSON Schema type.")

    def ref(self, ref: Any, where: str) -> Expr:
        parts = ref.split("/") if isinstance(ref, str) else []
        if len(parts) != 3 or parts[0] != "#" or parts[1] not in ("$defs", "definitions"):
            raise SchemaError(f"$ref (at {where}) must point into #/$defs; got {ref!r}.")
        target = self.root.get(parts[1], {}).get(parts[2])
        if target is None:
            raise SchemaError(f"$ref {ref!r} (at {where}) names no definition.")
        if ref in self.refs:
            raise SchemaError(f"$ref {ref!r} (at {where}) is recursive; that is not supported.")
        self.refs.append(ref)
        try:
            return self.value(target, ref)
        finally:
            self.refs.pop()

    def string(self, low: Any, high: Any, where: str) -> Expr:
        if not isinstance(low, int) or (high is not None and not isinstance(high, int)):
            raise SchemaError(f"minLength and maxLength (at {where}) must be whole numbers.")
        top = high if high is not None else max(self.chars, low)
        if top < low:
            raise SchemaError(f"maxLength is below minLength (at {where}).")
        if top == 0:
            return Expr('"\\"\\""', 2)
        body = f"char{{{low},{top}}}"
        return Expr(f'("\\"" {body} "\\"")', 2 + BYTES_PER_CHAR * top)

    def integer(self, schema: dict[str, Any], where: str) -> Expr:
        low, high = _bounds(schema, where, integer=True)
        if low is not None and high is not None:
            if high < low:
                raise SchemaError(f"No integer fits the bounds at {where}.")
            if high - low + 1 <= MAX_ENUMERATED:
                return alternatives([literal(i) for i in range(low, high + 1)])
        if high is None and low in (None, 0, 1):
            n = self.bounds.digits
            positive = f"([1-9] [0-9]{{0,{n - 1}}})" if n > 1 else "[1-9]"
            if low == 1:
                return Expr(positive, n)
            sign = '"-"? ' if low is None else ""
            return Expr(f'({sign}("0" | {positive}))', n + (low is None))
        raise SchemaError(
            f"Integer bounds (at {where}) must be a range of at most {MAX_ENUMERATED} values, "
            "or a minimum of 0 or 1."
        )

    def number(self, schema: dict[str, Any], where: str) -> Expr:
        low, high = _bounds(schema, where, integer=False)
        if high is not None or low not in (None, 0):
            raise SchemaError(f"Number bounds (at {where}) other than a minimum of 0 are not "
                              "supported.")  # fmt: skip
        whole = self.integer({"minimum": low} if low is not None else {}, where)
        fraction = f'("." [0-9]{{1,{FRACTION_DIGITS}}})?'
        return Expr(f"({whole.text} {fraction})", whole.size + 1 + FRACTION_DIGITS)

    def array(self, schema: dict[str, Any], where: str) -> Expr:
        low, high = _count(schema, "minItems", "maxItems", self.items, where)
        item = self.value(schema.get("items", {}), f"{where}.items")
        inner = repeat(item, low, high, ",")
        return Expr(f'("[" {inner.text} "]")', 2 + inner.size)

    def obj(self, schema: dict[str, Any], where: str) -> Expr:
        props = schema.get("properties") or {}
        required = schema.get("required", [])
        if not isinstance(props, dict) or not isinstance(required, list):
            raise SchemaError(f"properties and required (at {where}) must be an object and a list.")
        extra = schema.get("additionalProperties", True)
        if not props and not required:
            values = extra if isinstance(extra, dict) else {}
            return self.free_object(schema, values, FREE_DEPTH, where)
        members = {name: props.get(name, {}) for name in [*required, *props]}
        if len([n for n in members if n in required]) < schema.get("minProperties", 0):
            raise SchemaError(f"minProperties (at {where}) above the required properties is "
                              "not supported.")  # fmt: skip
        pairs = {
            name: sequence([literal(name), Expr('":"', 1), self.value(s, f"{where}.{name}")])
            for name, s in members.items()
        }
        needed = [pairs[n] for n in members if n in required]
        # Leaving optional members out keeps an answer valid, and short when room is short.
        optional = [pairs[n] for n in members if n not in required and self.bounds.optional]
        if needed:
            body = [needed[0], *(sequence([Expr('","', 1), p]) for p in needed[1:])]
            body += [Expr(f'("," {p.text})?', 1 + p.size) for p in optional]
            inner = sequence(body)
        else:
            inner = self.some_of(optional)
        return Expr(f'("{{" {inner.text} "}}")', 2 + inner.size)

    def some_of(self, options: list[Expr]) -> Expr:
        """Any of the optional members, in order, comma-separated, or none: rules `tail_i`
        keep it linear in their number."""
        base = f"t{len(self.rules)}_"
        for i in range(len(options) - 1, -1, -1):
            nxt = f" {base}{i + 1}" if i + 1 < len(options) else ""
            self.rules[f"{base}{i}"] = f'("," {options[i].text})?{nxt}'
        starts = [
            f"({o.text}{f' {base}{i + 1}' if i + 1 < len(options) else ''})"
            for i, o in enumerate(options)
        ]
        size = sum(o.size for o in options) + max(len(options) - 1, 0)
        return Expr("(" + " | ".join([*starts, '""']) + ")", size)

    def free(self, depth: int, where: str) -> Expr:
        """Any JSON value, nested at most `depth` deep."""
        number = self.number({}, where)
        scalars = [self.string(0, None, where), number, Expr('("true" | "false" | "null")', 5)]
        if depth == 0:
            return alternatives(scalars)
        inner = self.free(depth - 1, where)
        array = repeat(inner, 0, self.items, ",")
        containers = [
            self.free_object({}, {}, depth - 1, where),
            Expr(f'("[" {array.text} "]")', 2 + array.size),
        ]
        return alternatives(scalars + containers)

    def free_object(self, schema: dict[str, Any], values: Any, depth: int, where: str) -> Expr:
        low, high = _count(schema, "minProperties", "maxProperties", self.items, where)
        value = self.value(values, f"{where}.additionalProperties") if values else (
            self.free(depth, where)
        )  # fmt: skip
        member = sequence([self.string(1, None, where), Expr('":"', 1), value])
        # Keys may repeat: JSON allows it and a validator sees the last one; each value is valid.
        inner = repeat(member, low, high, ",")
        return Expr(f'("{{" {inner.text} "}}")', 2 + inner.size)


def _bounds(schema: dict[str, Any], where: str, integer: bool) -> tuple[Any, Any]:
    """Inclusive integer bounds (exclusive ones moved in by one), or None."""
    low, high = schema.get("minimum"), schema.get("maximum")
    if "exclusiveMinimum" in schema:
        low = schema["exclusiveMinimum"] + 1 if integer else None
    if "exclusiveMaximum" in schema:
        high = schema["exclusiveMaximum"] - 1 if integer else None
    for b in (low, high):
        if b is not None and (not isinstance(b, (int, float)) or isinstance(b, bool)):
            raise SchemaError(f"minimum and maximum (at {where}) must be numbers.")
    if integer:
        low = None if low is None else int(-(-low // 1))  # ceil
        high = None if high is None else int(high // 1)
    return low, high


def _count(schema: dict[str, Any], lo: str, hi: str, default: int, where: str) -> tuple[int, int]:
    low, high = schema.get(lo, 0), schema.get(hi)
    if not isinstance(low, int) or (high is not None and not isinstance(high, int)):
        raise SchemaError(f"{lo} and {hi} (at {where}) must be whole numbers.")
    top = high if high is not None else max(default, low)
    if top < low:
        raise SchemaError(f"{hi} is below {lo} (at {where}).")
    return low, top


def json_grammar(schema: dict[str, Any] | None, budget_tokens: int) -> str:
    """The grammar for answers valid against `schema` (None: any JSON object), with bounds as
    generous as fit in `budget_tokens`, one token kept for the end of text. If even the tightest
    bounds do not fit (the schema's own minimums or maximums are too large), the tightest are
    used and the answer may end at max_tokens, cut short."""
    builder, top = _fit(schema, budget_tokens)
    return builder.grammar(top)


def longest_answer(schema: dict[str, Any] | None, budget_tokens: int) -> int:
    """The most bytes an answer under json_grammar(schema, budget_tokens) can take."""
    return _fit(schema, budget_tokens)[1].size


def _fit(schema: dict[str, Any] | None, budget_tokens: int) -> tuple[_Builder, Expr]:
    top_schema = {"type": "object"} if schema is None else schema
    if not isinstance(top_schema, dict):
        raise SchemaError("The schema must be a JSON object.")
    for bounds in LADDER:
        builder = _Builder(top_schema, bounds)
        top = builder.value(top_schema, "the top")
        if top.size <= budget_tokens - 1:
            break
    return builder, top
