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

Supported: type (one or a list), properties, required (names), additionalProperties (false,
or a schema for the values of a free-form object), items, min/maxItems, min/maxLength,
min/maxProperties on free-form objects, enum and const (beside `type` at most), anyOf, oneOf
of branches that cannot overlap (different types, or different constants), allOf of one
schema, $ref into $defs/definitions (each alone, beside annotations only), integer ranges of
up to 1,000 values or a minimum of 0 or 1 or a maximum of 0 or -1, number with a minimum of
0 or below (or any integer range). Without a type, each keyword holds only the values of its
own type, and a type whose keywords cannot be held is left out. Annotations (title,
description, default, format, ...) are ignored, as a validator does by default. Anything
else that restricts values, any keyword of the wrong kind, and any budget too small for the
schema's shortest guarantee is refused in one sentence (SchemaError): what is accepted
always closes within the budget and validates.

Limits. xgrammar (inside openvino-genai, which compiles this EBNF natively, on the batching
scheduler's thread) slows down and grows with the grammar, and crashes the process on deep
nesting: measured on the tiny model (2 cores), a 66 KB grammar compiles in 0.2 s (+21 MB),
266 KB in 2.4 s (+160 MB), 532 KB in 11 s (+572 MB), 1 MB in 34 s (+2.2 GB); 10,000 nested
parentheses compile, 50,000 kill the process (SIGSEGV in the EBNF parser). A schema's
$refs are expanded where they are used, so a 2 KB schema of definitions that each refer twice
to the next doubles per level (14 levels: 1 MB). So a schema is refused past MAX_SCHEMA_BYTES,
MAX_DEPTH levels of nesting (through $refs), MAX_NODES subschemas after expanding $refs,
MAX_ENUM values in an enum, and MAX_GRAMMAR_BYTES of grammar, and the build stops after
MAX_BUILD_S: every accepted grammar compiles in well under a second.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

from dolly_desktop.errors import DollyError

# Worst-case bytes per string character: a non-ASCII character is up to 4 bytes of UTF-8, and
# the tokenizer may spend a token on each byte (every token is at least one byte).
BYTES_PER_CHAR = 4
FRACTION_DIGITS = 3
FREE_DEPTH = 2  # nesting of free-form values (json_object): an object in an object at most
MAX_ENUMERATED = 1000  # integer ranges up to this many values are listed as alternatives
MAX_SCHEMA_BYTES = 32 * 1024  # the schema as compact JSON
MAX_DEPTH = 32  # schemas within schemas, $refs followed
MAX_NODES = 2000  # subschemas built, each $ref counted where it is used
MAX_ENUM = 256  # values in one enum
MAX_GRAMMAR_BYTES = 64 * 1024  # 0.2 s and ~20 MB for xgrammar to compile (see above)
MAX_LITERAL_BYTES = 8 * 1024  # enum, const and integer-range values, all together
MAX_BUILD_S = 2.0  # building the grammar, every rung of the LADDER together


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
    "deprecated", "readOnly", "writeOnly", "$defs", "definitions",
    "contentEncoding", "contentMediaType", "strict",
}  # fmt: skip
HANDLED = {
    "type", "properties", "required", "items", "minItems", "maxItems", "minLength",
    "maxLength", "minProperties", "maxProperties", "enum", "const", "anyOf", "oneOf", "allOf",
    "$ref", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "additionalProperties",
}  # fmt: skip
TYPES = {"object", "array", "string", "integer", "number", "boolean", "null"}
# Keywords that stand alone: a restricting keyword beside them would be ignored by the grammar
# (enum and const take a `type` beside them: the values of other types are left out).
ALONE = {"$ref": set(), "anyOf": set(), "oneOf": set(), "allOf": set(), "enum": {"type"},
         "const": {"type"}}  # fmt: skip
CHAR = r'[^"\\\x00-\x1f] | "\\" ["\\/bfnrt]'


class SchemaError(DollyError):
    """The schema asks for something this grammar cannot guarantee."""


class SchemaLimit(SchemaError):
    """The schema is past a limit on size, nesting or build time."""


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
    def __init__(self, root: dict[str, Any], bounds: Bounds, deadline: float) -> None:
        self.root = root
        self.chars = bounds.chars
        self.items = bounds.items
        self.bounds = bounds
        self.deadline = deadline
        self.rules: dict[str, str] = {}
        self.refs: list[str] = []  # $refs being expanded: a cycle is refused
        self.nodes = 0
        self.depth = 0
        self.literal_bytes = 0

    def grammar(self, top: Expr) -> str:
        lines = [f"root ::= {top.text}", f"char ::= {CHAR}"]
        return "\n".join(lines + [f"{k} ::= {v}" for k, v in self.rules.items()]) + "\n"

    def value(self, schema: Any, where: str) -> Expr:
        """The grammar for `schema`, within the limits on nodes, depth, size and time."""
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise SchemaLimit(
                f"The schema expands to more than {MAX_NODES} subschemas (each $ref counted "
                "where it is used); simplify it."
            )
        if time.monotonic() > self.deadline:
            raise SchemaLimit(f"The schema took over {MAX_BUILD_S:g} s to turn into a grammar; "
                              "simplify it.")  # fmt: skip
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise SchemaLimit(f"The schema nests deeper than {MAX_DEPTH} levels (at {where}, "
                                  "$refs followed).")  # fmt: skip
            expr = self._value(schema, where)
        finally:
            self.depth -= 1
        if len(expr.text) > MAX_GRAMMAR_BYTES:
            raise SchemaLimit(f"The schema's grammar is over {MAX_GRAMMAR_BYTES >> 10} KB (at "
                              f"{where}); simplify it.")  # fmt: skip
        return expr

    def _value(self, schema: Any, where: str) -> Expr:
        if schema is True or schema == {}:
            return self.free(FREE_DEPTH, where)
        if not isinstance(schema, dict):
            raise SchemaError(f"The schema at {where} must be an object.")
        unknown = sorted(set(schema) - HANDLED - IGNORED)
        if unknown:
            raise SchemaError(f"The schema keyword {unknown[0]!r} (at {where}) is not supported.")
        nulls = sorted(k for k in HANDLED - {"const"} if k in schema and schema[k] is None)
        if nulls:
            raise SchemaError(f"{nulls[0]} (at {where}) must not be null.")
        _check_kinds(schema, where)
        for key, beside in ALONE.items():
            if key in schema:
                others = sorted(set(schema) & HANDLED - {key} - beside)
                if others:
                    raise SchemaError(
                        f"{others[0]!r} beside {key!r} (at {where}) is not supported: "
                        "the answer could not be held to both."
                    )
        if "$ref" in schema:
            return self.ref(schema["$ref"], where)
        if "const" in schema or "enum" in schema:
            return self.constants(schema, where)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                branches = _schemas(schema[key], key, where)
                if key == "oneOf":
                    self.disjoint(branches, where)
                return alternatives(
                    [self.value(s, f"{where}.{key}[{i}]") for i, s in enumerate(branches)]
                )
        if "allOf" in schema:
            branches = _schemas(schema["allOf"], "allOf", where)
            if len(branches) != 1:
                raise SchemaError(f"allOf (at {where}) must hold one schema.")
            return self.value(branches[0], f"{where}.allOf[0]")
        kinds = _types(schema, where)
        if kinds is None:
            return self.untyped(schema, where)
        return alternatives([self.typed(k, schema, where) for k in kinds])

    def constants(self, schema: dict[str, Any], where: str) -> Expr:
        """const or enum, beside a `type` at most: the values of that type."""
        if "const" in schema and "enum" in schema:
            raise SchemaError(f"'const' beside 'enum' (at {where}) is not supported.")
        if "const" in schema:
            values = [schema["const"]]
        else:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise SchemaError(f"enum (at {where}) must be a non-empty list.")
            if len(values) > MAX_ENUM:
                raise SchemaLimit(f"enum (at {where}) has {len(values)} values; the limit is "
                                  f"{MAX_ENUM}.")  # fmt: skip
        kinds = _types(schema, where)
        if kinds is not None:
            values = [v for v in values if any(_is(v, k) for k in kinds)]
            if not values:
                raise SchemaError(f"No value of enum or const (at {where}) is of its type.")
        return self.enumerated(values, where)

    def disjoint(self, branches: list[Any], where: str) -> None:
        """oneOf means exactly one branch: refused unless no answer can match two."""
        seen: list[tuple[int, set[str] | None, set[str] | None]] = []
        for i, branch in enumerate(branches):
            kinds, values = self.shape(branch, 0)
            for j, other_kinds, other_values in seen:
                apart = (
                    kinds is not None and other_kinds is not None and not kinds & other_kinds
                ) or (values is not None and other_values is not None and not values & other_values)
                if not apart:
                    raise SchemaError(
                        f"oneOf (at {where}): branches {j} and {i} may both match one answer; "
                        "only branches of different types or different constants are "
                        "supported (anyOf allows overlap)."
                    )
            seen.append((i, kinds, values))

    def shape(self, schema: Any, hops: int) -> tuple[set[str] | None, set[str] | None]:
        """The JSON types a schema's values may have (integer counted as number), and the
        values themselves when it is a const or enum; None for "any"."""
        if not isinstance(schema, dict) or hops > MAX_DEPTH:
            return None, None
        if isinstance(schema.get("$ref"), str):
            return self.shape(self.target(schema["$ref"], "oneOf"), hops + 1)
        values: list[Any] | None = None
        if "const" in schema:
            values = [schema["const"]]
        elif isinstance(schema.get("enum"), list):
            values = schema["enum"]
        if values is not None:
            keys = {_canonical(v) for v in values}
            return {_kind(v) for v in values}, keys
        for key in ("anyOf", "oneOf", "allOf"):
            if isinstance(schema.get(key), list) and schema[key]:
                parts = [self.shape(s, hops + 1)[0] for s in schema[key]]
                if any(p is None for p in parts):
                    return None, None
                return set().union(*parts), None  # type: ignore[arg-type]
        try:
            kinds = _types(schema, "oneOf")
        except SchemaError:
            return None, None
        if kinds is None:
            return None, None
        return {"number" if k == "integer" else k for k in kinds}, None

    def typed(self, kind: str, schema: dict[str, Any], where: str) -> Expr:
        if kind == "object":
            return self.obj(schema, where)
        if kind == "array":
            return self.array(schema, where)
        if kind == "string":
            low, high = _count(schema, "minLength", "maxLength", self.chars, where)
            return self.string(low, high)
        if kind == "integer":
            return self.integer(schema, where)
        if kind == "number":
            return self.number(schema, where)
        if kind == "boolean":
            return Expr('("true" | "false")', 5)
        return Expr('"null"', 4)

    def target(self, ref: Any, where: str) -> Any:
        parts = ref.split("/") if isinstance(ref, str) else []
        if len(parts) != 3 or parts[0] != "#" or parts[1] not in ("$defs", "definitions"):
            raise SchemaError(f"$ref (at {where}) must point into #/$defs; got {ref!r:.80}.")
        defs = self.root.get(parts[1], {})
        if not isinstance(defs, dict):
            raise SchemaError(f"{parts[1]} must be an object of named schemas.")
        target = defs.get(parts[2])
        if target is None:
            raise SchemaError(f"$ref {ref!r:.80} (at {where}) names no definition.")
        return target

    def ref(self, ref: Any, where: str) -> Expr:
        target = self.target(ref, where)
        if ref in self.refs:
            raise SchemaError(f"$ref {ref!r:.80} (at {where}) is recursive; that is not "
                              "supported.")  # fmt: skip
        self.refs.append(ref)
        try:
            return self.value(target, ref)
        finally:
            self.refs.pop()

    def string(self, low: int, high: int) -> Expr:
        """A string of `low` to `high` characters (or a subset of those lengths). xgrammar's
        compile time grows with the character positions in the grammar (char{0,32}: 1.5 s
        holding the GIL, char{0,128}: 6 s), and much less with repetitions of a rule: so
        runs of four characters (a rule), then up to three single ones."""
        if high == 0:
            return Expr('"\\"\\""', 2)
        if high <= 3:
            body = self.chars_rule(low, high)
        else:
            qa, ra = divmod(low, 4)
            qb, rb = ((high - 3) // 4, 3) if high >= 4 * qa + 3 else (qa, high - 4 * qa)
            self.rules["char4"] = "char char char char"
            body = f"char4{{{qa},{qb}}} {self.chars_rule(ra, rb)}"
            high = 4 * qb + rb
        return Expr(f'("\\"" {body} "\\"")', 2 + BYTES_PER_CHAR * high)

    def chars_rule(self, low: int, high: int) -> str:
        """A rule for `low` to `high` (at most 3) characters, shared by every string."""
        name = f"chars{low}_{high}"
        self.rules[name] = f"char{{{low},{high}}}"
        return name

    def digits_rule(self, low: int, high: int) -> str:
        name = f"digits{low}_{high}"
        self.rules[name] = f"[0-9]{{{low},{high}}}"
        return name

    def enumerated(self, values: list[Any], where: str) -> Expr:
        """Alternatives of literal values, counted against MAX_LITERAL_BYTES."""
        options = [_literal(v, where) for v in values]
        self.literal_bytes += sum(len(o.text) for o in options)
        if self.literal_bytes > MAX_LITERAL_BYTES:
            raise SchemaLimit(
                f"The schema's enums, consts and integer ranges (at {where}) add up to over "
                f"{MAX_LITERAL_BYTES >> 10} KB of values; the limit keeps compiling it quick."
            )
        return alternatives(options)

    def integer(self, schema: dict[str, Any], where: str) -> Expr:
        low, high = _bounds(schema, where)
        if low is not None and high is not None:
            if high < low:
                raise SchemaError(f"No integer fits the bounds at {where}.")
            if high - low + 1 <= MAX_ENUMERATED:
                return self.enumerated(list(range(low, high + 1)), where)
        n = self.bounds.digits
        positive = f"([1-9] {self.digits_rule(0, n - 1)})" if n > 1 else "[1-9]"
        if high is None and low in (None, 0, 1):
            if low == 1:
                return Expr(positive, n)
            sign = '"-"? ' if low is None else ""
            return Expr(f'({sign}("0" | {positive}))', n + (low is None))
        if low is None and high in (0, -1):
            if high == -1:
                return Expr(f'("-" {positive})', n + 1)
            return Expr(f'("0" | "-" {positive})', n + 1)
        raise SchemaError(
            f"Integer bounds (at {where}) must be a range of at most {MAX_ENUMERATED} values, "
            "a minimum of 0 or 1, or a maximum of 0 or -1."
        )

    def number(self, schema: dict[str, Any], where: str) -> Expr:
        _bounds(schema, where)  # checks that every bound is a finite number
        if not {"maximum", "exclusiveMinimum", "exclusiveMaximum"} & set(schema) and (
            "minimum" not in schema or schema["minimum"] <= 0
        ):
            # Non-negative numbers satisfy any minimum at or below 0.
            whole = self.integer({} if "minimum" not in schema else {"minimum": 0}, where)
            fraction = f'("." {self.digits_rule(1, FRACTION_DIGITS)})?'
            return Expr(f"({whole.text} {fraction})", whole.size + 1 + FRACTION_DIGITS)
        # Other bounds: the whole numbers within them, which are numbers too.
        try:
            return self.integer(schema, where)
        except SchemaError:
            raise SchemaError(
                f"Number bounds (at {where}) must be a minimum of 0 or below, or hold a range "
                f"of at most {MAX_ENUMERATED} whole numbers, or a minimum of 0 or 1, or a "
                "maximum of 0 or -1."
            ) from None

    def array(self, schema: dict[str, Any], where: str) -> Expr:
        low, high = _count(schema, "minItems", "maxItems", self.items, where)
        items = schema.get("items", {})
        if items is False:
            raise SchemaError(f"items: false (at {where}) is not supported.")
        item = self.value(items, f"{where}.items")
        inner = repeat(item, low, high, ",")
        return Expr(f'("[" {inner.text} "]")', 2 + inner.size)

    def obj(self, schema: dict[str, Any], where: str) -> Expr:
        props = schema.get("properties", {})
        required = schema.get("required", [])
        if not isinstance(props, dict):
            raise SchemaError(f"properties (at {where}) must be an object of schemas.")
        if not isinstance(required, list) or not all(isinstance(n, str) for n in required):
            raise SchemaError(f"required (at {where}) must be a list of property names.")
        extra = schema.get("additionalProperties", True)
        if not isinstance(extra, (bool, dict)):
            raise SchemaError(f"additionalProperties (at {where}) must be true, false or a "
                              "schema.")  # fmt: skip
        low, high = _count(schema, "minProperties", "maxProperties", self.items, where)
        if not props and not required:
            if extra is False:  # only {} has no properties at all
                if low > 0:
                    raise SchemaError(f"minProperties (at {where}) with no properties allowed.")
                return Expr('"{}"', 2)
            return self.free_object(low, high, extra if isinstance(extra, dict) else {},
                                    FREE_DEPTH, where)  # fmt: skip
        for name in required:
            if name not in props and extra is False:
                raise SchemaError(f"required {name!r:.40} (at {where}) is not among the "
                                  "properties, and additionalProperties is false.")  # fmt: skip
        members = {
            name: props.get(name, extra if isinstance(extra, dict) else {})
            for name in [*required, *props]
        }
        needed_count = len([n for n in members if n in required])
        if needed_count < low:
            raise SchemaError(f"minProperties (at {where}) above the required properties is "
                              "not supported.")  # fmt: skip
        if "maxProperties" in schema and high < len(members):
            raise SchemaError(f"maxProperties (at {where}) below the number of properties is "
                              "not supported.")  # fmt: skip
        pairs = {
            name: sequence(
                [_literal(name, where), Expr('":"', 1), self.value(s, f"{where}.{name:.40}")]
            )
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
        return alternatives(list(self.free_kinds(depth, where).values()))

    def free_kinds(self, depth: int, where: str) -> dict[str, Expr]:
        """Any JSON value, nested at most `depth` deep, by type: integers among the numbers,
        true, false and null together."""
        kinds = {
            "string": self.string(0, self.chars),
            "number": self.number({}, where),
            "literal": Expr('("true" | "false" | "null")', 5),
        }
        if depth > 0:
            array = repeat(self.free(depth - 1, where), 0, self.items, ",")
            kinds["object"] = self.free_object(0, self.items, {}, depth - 1, where)
            kinds["array"] = Expr(f'("[" {array.text} "]")', 2 + array.size)
        return kinds

    def untyped(self, schema: dict[str, Any], where: str) -> Expr:
        """A schema without a type: each keyword restricts only values of its own type
        (minimum: numbers; a validator passes a string), so the restricted types are built
        as if typed, and one whose restriction the grammar cannot hold is left out: an answer
        of another type is as valid. The limits still refuse the schema."""
        kinds = self.free_kinds(FREE_DEPTH, where)
        for kind, keys in RESTRICTS.items():
            if keys & set(schema):
                try:
                    kinds[kind] = self.typed(kind, schema, where)
                except SchemaLimit:
                    raise
                except SchemaError:
                    del kinds[kind]
        return alternatives(list(kinds.values()))

    def free_object(self, low: int, high: int, values: Any, depth: int, where: str) -> Expr:
        value = self.value(values, f"{where}.additionalProperties") if values else (
            self.free(depth, where)
        )  # fmt: skip
        member = sequence([self.string(1, max(self.chars, 1)), Expr('":"', 1), value])
        # Keys may repeat: JSON allows it and a validator sees the last one; each value is valid.
        inner = repeat(member, low, high, ",")
        return Expr(f'("{{" {inner.text} "}}")', 2 + inner.size)


COUNT_KEYWORDS = {"minLength", "maxLength", "minItems", "maxItems", "minProperties",
                  "maxProperties"}  # fmt: skip
NUMBER_KEYWORDS = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}
# The keywords that restrict values of one type only (properties and items imply their type).
RESTRICTS = {
    "string": {"minLength", "maxLength"},
    "number": NUMBER_KEYWORDS,
    "array": {"minItems", "maxItems"},
    "object": {"required", "additionalProperties", "minProperties", "maxProperties"},
}


def _check_kinds(schema: dict[str, Any], where: str) -> None:
    """Every keyword's value of the kind JSON Schema requires, also where it does not apply
    (maxItems on a string): a validator would refuse such a schema."""
    for key in COUNT_KEYWORDS & set(schema):
        b = schema[key]
        if not isinstance(b, int) or isinstance(b, bool) or b < 0:
            raise SchemaError(f"{key} (at {where}) must be a whole number, 0 or more.")
    for key in NUMBER_KEYWORDS & set(schema):
        _number(schema, key, where)
    required = schema.get("required", [])
    if (
        not isinstance(required, list)
        or not all(isinstance(n, str) for n in required)
        or (len(set(required)) != len(required))
    ):
        raise SchemaError(f"required (at {where}) must be a list of distinct property names.")
    if not isinstance(schema.get("properties", {}), dict):
        raise SchemaError(f"properties (at {where}) must be an object of schemas.")
    if not isinstance(schema.get("additionalProperties", True), (bool, dict)):
        raise SchemaError(f"additionalProperties (at {where}) must be true, false or a schema.")
    if not isinstance(schema.get("items", True), (bool, dict)):
        raise SchemaError(f"items (at {where}) must be a schema.")
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            _schemas(schema[key], key, where)
    _types(schema, where)


def _literal(value: Any, where: str) -> Expr:
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        raise SchemaError(f"A value (at {where}) is not finite (NaN or Infinity).") from None
    return literal(value)


def _schemas(value: Any, key: str, where: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise SchemaError(f"{key} (at {where}) must be a non-empty list of schemas.")
    return value


def _types(schema: dict[str, Any], where: str) -> list[str] | None:
    """The schema's types (from `type`, or implied by properties or items); None for any."""
    kinds = schema.get("type")
    if kinds is None:
        return ["object"] if "properties" in schema else ["array"] if "items" in schema else None
    listed = kinds if isinstance(kinds, list) else [kinds]
    if not listed:
        raise SchemaError(f"type (at {where}) must name at least one type.")
    for kind in listed:
        if not isinstance(kind, str) or kind not in TYPES:
            raise SchemaError(f"The type {kind!r:.40} (at {where}) is not a JSON Schema type.")
    if len(set(listed)) != len(listed):
        raise SchemaError(f"type (at {where}) names a type twice.")
    return listed


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}[type(value)]


def _is(value: Any, kind: str) -> bool:
    """Whether a JSON value is of a JSON Schema type (1.0 is an integer, true is not)."""
    actual = _kind(value)
    if kind == "integer":
        return actual == "number" and float(value).is_integer()
    return actual == kind


def _canonical(value: Any) -> str:
    """Equal JSON values (as a validator compares them: 1 == 1.0) give equal strings."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, list):
        return "[" + ",".join(_canonical(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{"
            + ",".join(f"{json.dumps(k)}:{_canonical(v)}" for k, v in sorted(value.items()))
            + "}"
        )
    return json.dumps(value)


def _number(schema: dict[str, Any], key: str, where: str) -> float | int | None:
    b = schema.get(key)
    if b is None:
        return None
    if not isinstance(b, (int, float)) or isinstance(b, bool) or not math.isfinite(b):
        raise SchemaError(f"{key} (at {where}) must be a finite number.")
    return b


def _bounds(schema: dict[str, Any], where: str) -> tuple[int | None, int | None]:
    """The inclusive whole-number bounds, exclusive ones moved in to the next whole number;
    None where there is none."""
    low, high = _number(schema, "minimum", where), _number(schema, "maximum", where)
    xlow = _number(schema, "exclusiveMinimum", where)
    xhigh = _number(schema, "exclusiveMaximum", where)
    lows = [math.ceil(b) for b in (low,) if b is not None]
    lows += [math.floor(b) + 1 for b in (xlow,) if b is not None]
    highs = [math.floor(b) for b in (high,) if b is not None]
    highs += [math.ceil(b) - 1 for b in (xhigh,) if b is not None]
    return max(lows, default=None), min(highs, default=None)


def _count(schema: dict[str, Any], lo: str, hi: str, default: int, where: str) -> tuple[int, int]:
    """The schema's own count bounds, the upper one brought down to `default` where the
    schema allows more (a shorter answer is as valid)."""
    low, high = schema.get(lo, 0), schema.get(hi)
    for key, b in ((lo, low), (hi, high)):
        if b is not None and (not isinstance(b, int) or isinstance(b, bool) or b < 0):
            raise SchemaError(f"{key} (at {where}) must be a whole number, 0 or more.")
    if high is not None and high < low:
        raise SchemaError(f"{hi} is below {lo} (at {where}).")
    top = max(default, low)
    return low, top if high is None else min(high, top)


def json_grammar(schema: dict[str, Any] | None, budget_tokens: int) -> str:
    """The grammar for answers valid against `schema` (None: any JSON object), with bounds as
    generous as fit in `budget_tokens`, one token kept for the end of text. A schema whose
    answers do not fit even with the tightest bounds (its own minimums are too large for the
    budget) is refused: every answer under the grammar closes, and validates."""
    builder, top = _fit(schema, budget_tokens)
    return builder.grammar(top)


def longest_answer(schema: dict[str, Any] | None, budget_tokens: int) -> int:
    """The most bytes an answer under json_grammar(schema, budget_tokens) can take."""
    return _fit(schema, budget_tokens)[1].size


def _fit(schema: dict[str, Any] | None, budget_tokens: int) -> tuple[_Builder, Expr]:
    top_schema = {"type": "object"} if schema is None else schema
    if not isinstance(top_schema, dict):
        raise SchemaError("The schema must be a JSON object.")
    try:
        size = len(json.dumps(top_schema, separators=(",", ":")))
    except (ValueError, RecursionError):
        raise SchemaError(f"The schema nests deeper than {MAX_DEPTH} levels.") from None
    if size > MAX_SCHEMA_BYTES:
        raise SchemaError(f"The schema is {size} bytes as compact JSON; the limit is "
                          f"{MAX_SCHEMA_BYTES}.")  # fmt: skip
    for key in ("$defs", "definitions"):
        if key in top_schema and not isinstance(top_schema[key], dict):
            raise SchemaError(f"{key} must be an object of named schemas.")
    deadline = time.monotonic() + MAX_BUILD_S
    for bounds in LADDER:
        builder = _Builder(top_schema, bounds, deadline)
        top = builder.value(top_schema, "the top")
        if top.size <= budget_tokens - 1:
            return builder, top
    raise SchemaError(
        f"Answers to this schema can take {top.size + 1} tokens (with the end of text), more "
        f"than the {budget_tokens} this request leaves for the answer: raise max_tokens, or "
        "lower the schema's minimums."
    )
