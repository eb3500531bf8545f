"""Blocks of text -> chunks of about TARGET_TOKENS tokens with a small overlap, cut only
between words, each with its anchor (page, and the heading of the section most of it is in).
Chunks never cross a page.

Tokens are counted with the model's own tokenizer (`tokenizer.json`, through the `tokenizers`
library: no torch, no OpenVINO). Byte-level BPE never merges across the start of a
whitespace-led word, so a text's count is the sum of the counts of its words, each with the
whitespace before it: counted once per distinct word and cached, which is what lets indexing
keep up with the disk. (The three template keys are special tokens that span spaces; a
document quoting them counts a token or two high here. The prompt itself is always counted
whole: retrieve.pack.)
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from itertools import accumulate, compress, groupby
from operator import not_
from pathlib import Path

from dolly_desktop.documents.parse import Block
from dolly_desktop.errors import DollyError
from dolly_desktop.generation.prompt import END_KEY, INSTRUCTION_KEY, RESPONSE_KEY

TARGET_TOKENS = 256  # a chunk ends at the last word that keeps it within this many
MAX_TOKENS = 300  # ... or takes in a short tail up to this many
OVERLAP_TOKENS = 32  # the next chunk starts this many tokens (at most) before the end
MAX_WORD_CHARS = 100  # a "word" longer than this (base64, a hash) is cut into pieces of it
# A word with the whitespace before it; the unit of counting and of cutting.
_UNIT = re.compile(r"\s*\S{1," + str(MAX_WORD_CHARS) + "}")
CACHE_LIMIT = 2_000_000  # distinct words kept counted (cleared when full)
SEPARATOR = "\n\n"  # between the blocks of a page
# Dolly's template keys are special tokens (matched even inside a word: "### Ending"): in a
# passage they would end the Input: early. A document's own are demoted a level.
_KEYS = re.compile("|".join(re.escape(k) for k in (INSTRUCTION_KEY, RESPONSE_KEY, END_KEY)))


def defuse(text: str) -> str:
    """`text` with Dolly's template keys made plain text ("### Response:" -> "## Response:")."""
    if "###" not in text:  # nearly always: skip the scan
        return text
    return _KEYS.sub(lambda m: m.group(0)[1:], text)


@dataclass(frozen=True)
class Chunk:
    text: str
    tokens: int
    page: int | None = None
    heading: str = ""


class TokenCounter:
    """The model's tokenizer, counting words with a cache."""

    def __init__(self, tokenizer_json: str | Path) -> None:
        from tokenizers import Tokenizer

        path = Path(tokenizer_json)
        self.path = path  # for worker processes to load their own (documents.prepare)
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as e:  # a missing or foreign file: one sentence
            raise DollyError(f"{path} is not a tokenizer the app can read: {e}") from e
        self._cache: dict[str, int] = {}
        self._spaced: dict[str, int] = {}  # word -> count of " " + word
        self._batch = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)

    def count(self, text: str) -> int:
        """Exactly as the model counts `text` (no special tokens added)."""
        return len(self._tok.encode(text, add_special_tokens=False).ids)

    def trim(self) -> None:
        """Empty the caches once they hold CACHE_LIMIT words (between files, never inside)."""
        if len(self._cache) + len(self._spaced) > CACHE_LIMIT:
            self._cache.clear()
            self._spaced.clear()

    def lookup(self, keys: list[str], spaced: bool) -> list[int | None]:
        """The cached count of each key (of " " + key if `spaced`), None where not yet known."""
        return list(map((self._spaced if spaced else self._cache).get, keys))

    def learn(self, exact: set[str], spaced: set[str]) -> None:
        """Count these keys (`spaced`: " " + key) in one batch, and cache the counts."""
        keys = [*exact, *spaced]
        texts = [*exact, *(" " + k for k in spaced)]
        counts = [len(e.ids) for e in self._batch(texts, add_special_tokens=False)]
        self._cache.update(zip(keys[: len(exact)], counts, strict=False))
        self._spaced.update(zip(keys[len(exact) :], counts[len(exact) :], strict=True))

    def fill(self, u: _Units) -> None:
        """Put the counts learnt since in the gaps (None) of `u.counts`: found by list.index,
        so a block with a few new words costs a few steps, not a second look at every word."""
        counts, words = u.counts, u.words
        try:
            i = counts.index(None)
            while True:
                cache = self._spaced if u.spaced and i > 0 else self._cache
                counts[i] = cache[words[i]]
                i = counts.index(None, i + 1)
        except ValueError:
            return

    def unit_counts(self, units: list[str]) -> list[int]:
        """The count of each unit, exactly as written."""
        got = self.lookup(units, False)
        if None in got:
            self.learn(set(compress(units, map(not_, got))), set())
            got = self.lookup(units, False)
        return got  # type: ignore[return-value]


@dataclass
class _Units:
    """One block's units (a word with the whitespace before it), counted. Either `spaced`:
    `words`[0] as written, then " " + each other word; or each of `words` as written."""

    words: list[str]
    spaced: bool
    counts: list[int | None]
    lengths: list[int]


def _units(text: str, counter: TokenCounter, lead: str, missing: tuple[set, set]) -> _Units:
    """`lead` + `text` (stripped) as counted units; uncounted words are added to `missing`.

    Most prose has single spaces between words of under MAX_WORD_CHARS: there `split(" ")`
    finds the units at several times the speed of the regex, and they are counted and measured
    without building their strings (a piece may hold a line break: "end.\nNext" is one unit,
    counted whole). Runs of spaces (the tokenizer has tokens for them) and long "words" take
    the regex, _UNIT."""
    pieces = text.split(" ")
    if "  " not in text and max(map(len, pieces)) <= MAX_WORD_CHARS:
        first = lead + pieces[0]
        rest = pieces[1:]
        counts = [*counter.lookup([first], False), *counter.lookup(rest, True)]
        lengths = [len(first), *map((1).__add__, map(len, rest))]
        if None in counts:
            if counts[0] is None:
                missing[0].add(first)
            missing[1].update(compress(rest, map(not_, counts[1:])))
        return _Units([first, *rest], True, counts, lengths)
    units = _UNIT.findall(text)
    units[0] = lead + units[0]
    counts = counter.lookup(units, False)
    if None in counts:
        missing[0].update(compress(units, map(not_, counts)))
    return _Units(units, False, counts, list(map(len, units)))


def _main_block(starts: list[int], cum: list[int], start: int, end: int) -> int:
    """The block holding most of the tokens of units start..end (the first on a tie)."""
    first, last = bisect_right(starts, start) - 1, bisect_right(starts, end - 1) - 1
    bounds = [*starts, len(cum) - 1]
    return max(
        range(first, last + 1),
        key=lambda b: (cum[min(end, bounds[b + 1])] - cum[max(start, bounds[b])], -b),
    )


def chunk_blocks(
    blocks: list[Block],
    counter: TokenCounter,
    target: int = TARGET_TOKENS,
    overlap: int = OVERLAP_TOKENS,
    max_tokens: int = MAX_TOKENS,
) -> list[Chunk]:
    """Cut blocks into chunks of at most `target` tokens (`max_tokens` to take in a short
    tail), consecutive chunks sharing up to `overlap` tokens; a page's blocks run together."""
    missing: tuple[set[str], set[str]] = (set(), set())
    units: list[tuple[Block, _Units]] = []
    counter.trim()
    for b in blocks:
        text = b.text
        while " \n" in text:  # spaces ending a line: dropped (else each was a unit of its own)
            text = text.replace(" \n", "\n")
        text = text.strip()
        if text:
            lead = SEPARATOR if units and units[-1][0].page == b.page else ""
            units.append((Block(text, b.page, b.heading), _units(text, counter, lead, missing)))
    if missing[0] or missing[1]:
        counter.learn(*missing)  # one batch for the file: the tokenizer's threads start once
    chunks: list[Chunk] = []
    for page, group_iter in groupby(units, key=lambda bu: bu[0].page):
        texts: list[str] = []  # the page's blocks, stripped, joined by SEPARATOR
        counts: list[int] = []  # tokens of each unit
        lengths: list[int] = []  # characters of each unit
        starts: list[int] = []  # the first unit of each block
        heads: list[str] = []
        for b, u in group_iter:
            starts.append(len(counts))
            heads.append(b.heading)
            texts.append(b.text)
            counter.fill(u)  # words first met in this file: counted by now
            counts.extend(u.counts)  # type: ignore[arg-type]
            lengths.extend(u.lengths)
        if not counts:
            continue
        whole = SEPARATOR.join(texts)
        cum = [0, *accumulate(counts)]
        at = [0, *accumulate(lengths)]  # where each unit ends in `whole`
        n, start = len(counts), 0
        while start < n:
            end = max(bisect_right(cum, cum[start] + target) - 1, start + 1)
            if cum[n] - cum[start] <= max_tokens:
                end = n  # a short tail joins this chunk rather than standing alone
            text = defuse(whole[at[start] : at[end]].strip())
            heading = heads[_main_block(starts, cum, start, end)]
            chunks.append(Chunk(text, cum[end] - cum[start], page, heading))
            if end >= n:
                break
            start = max(bisect_left(cum, cum[end] - overlap), start + 1)
    return chunks
