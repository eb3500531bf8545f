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
from itertools import accumulate, groupby
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
# Dolly's template keys are special tokens (matched even inside a word: "### Ending"): in a
# passage they would end the Input: early. A document's own are demoted a level.
_KEYS = re.compile("|".join(re.escape(k) for k in (INSTRUCTION_KEY, RESPONSE_KEY, END_KEY)))


def defuse(text: str) -> str:
    """`text` with Dolly's template keys made plain text ("### Response:" -> "## Response:")."""
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
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as e:  # a missing or foreign file: one sentence
            raise DollyError(f"{path} is not a tokenizer the app can read: {e}") from e
        self._cache: dict[str, int] = {}
        self._batch = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)

    def count(self, text: str) -> int:
        """Exactly as the model counts `text` (no special tokens added)."""
        return len(self._tok.encode(text, add_special_tokens=False).ids)

    def unit_counts(self, units: list[str]) -> list[int]:
        cache = self._cache
        missing = list(set(units).difference(cache))
        if missing:
            if len(cache) + len(missing) > CACHE_LIMIT:
                cache.clear()
                missing = list(set(units))
            encoded = self._batch(missing, add_special_tokens=False)
            cache.update(zip(missing, (len(e.ids) for e in encoded), strict=True))
        return list(map(cache.__getitem__, units))


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
    chunks: list[Chunk] = []
    for page, group_iter in groupby(blocks, key=lambda b: b.page):
        group = list(group_iter)
        units: list[str] = []
        starts: list[int] = []  # the first unit of each block
        for b in group:
            words = _UNIT.findall(b.text)
            if not words:
                continue
            if units and not words[0][:1].isspace():
                words[0] = "\n\n" + words[0]
            starts.append(len(units))
            units.extend(words)
        if not units:
            continue
        heads = [b.heading for b in group if _UNIT.search(b.text)]
        cum = [0, *accumulate(counter.unit_counts(units))]
        n, start = len(units), 0
        while start < n:
            end = max(bisect_right(cum, cum[start] + target) - 1, start + 1)
            if cum[n] - cum[start] <= max_tokens:
                end = n  # a short tail joins this chunk rather than standing alone
            text = defuse("".join(units[start:end]).strip())
            heading = heads[_main_block(starts, cum, start, end)]
            chunks.append(Chunk(text, cum[end] - cum[start], page, heading))
            if end >= n:
                break
            start = max(bisect_left(cum, cum[end] - overlap), start + 1)
    return chunks
