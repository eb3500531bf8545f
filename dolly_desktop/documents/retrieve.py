"""A question -> the passage for Dolly's `Input:` slot: the best chunks, in rank order,
de-duplicated, as many as fit beside the instruction and max new tokens.

`Retriever` is the seam: the BM25 index is one; an embedding retriever (fused with BM25 by
reciprocal rank) can be another, and the window, the CLI and the server do not change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from dolly_desktop.documents.index import DocIndex, Hit
from dolly_desktop.errors import DollyError
from dolly_desktop.generation.prompt import MAX_CONTEXT_CHARS, build_prompt, room_after

SEPARATOR = "\n\n"
SEPARATOR_TOKENS = 2  # what a SEPARATOR and the chunk edges it joins may add, at most
CANDIDATES = 20  # chunks fetched for one question; packing stops well before on 2048 tokens
MAX_MISSES = 6  # chunks counted and found too long before packing gives up


class Retriever(Protocol):
    def search(self, collections: Sequence[str], question: str, limit: int) -> list[Hit]:
        """The best chunks for `question`, best first."""
        ...


class Bm25Retriever:
    """SQLite FTS5's bm25 over the document index."""

    def __init__(self, index: DocIndex) -> None:
        self.index = index

    def search(self, collections: Sequence[str], question: str, limit: int) -> list[Hit]:
        return self.index.search(collections, question, limit)


@dataclass
class Passage:
    text: str = ""
    hits: list[Hit] = field(default_factory=list)  # the chunks in the passage, in its order
    prompt_tokens: int = 0  # the whole prompt, passage included, as the model counts it


def fits(prompt_tokens: int, context_length: int, max_new_tokens: int) -> bool:
    """Whether a prompt leaves room for max_new_tokens (room_after: the engine's own rule)."""
    try:
        return room_after(prompt_tokens, context_length) >= max_new_tokens
    except DollyError:
        return False


def pack(
    hits: Sequence[Hit],
    instruction: str,
    count_tokens: Callable[[str], int],
    context_length: int,
    max_new_tokens: int,
) -> Passage:
    """The longest rank-ordered run of distinct chunks whose prompt leaves room for
    `max_new_tokens`; a chunk too long for what is left is passed over for the next one.

    Chunks are taken on their own token counts (plus SEPARATOR_TOKENS each), then the whole
    prompt is counted by the model's tokenizer; while it does not fit (counts from another
    tokenizer, a join that tokenizes longer) the last chunk goes and it is counted again.
    Nothing is returned that was not counted whole."""
    base = count_tokens(build_prompt(instruction))
    if not fits(base, context_length, max_new_tokens):
        return Passage(prompt_tokens=base)
    budget = context_length - max_new_tokens
    chosen: list[Hit] = []
    estimate = base
    seen: set[str] = set()
    misses = 0
    for h in hits:
        key = " ".join(h.text.split()).lower()
        if not key or key in seen:
            continue
        seen.add(key)
        if estimate + h.tokens + SEPARATOR_TOKENS <= budget:
            chosen.append(h)
            estimate += h.tokens + SEPARATOR_TOKENS
        else:
            misses += 1
            if misses >= MAX_MISSES:
                break
    while chosen:
        text = SEPARATOR.join(x.text for x in chosen)
        if len(text) <= MAX_CONTEXT_CHARS:
            n = count_tokens(build_prompt(instruction, text))
            if fits(n, context_length, max_new_tokens):
                return Passage(text, chosen, n)
        chosen.pop()
    return Passage(prompt_tokens=base)


def retrieve(
    retriever: Retriever,
    collections: Sequence[str],
    instruction: str,
    count_tokens: Callable[[str], int],
    context_length: int,
    max_new_tokens: int,
    candidates: int = CANDIDATES,
) -> Passage:
    """Search, then pack: the passage for `instruction` (empty when nothing matches or fits)."""
    hits = retriever.search(collections, instruction, candidates)
    return pack(hits, instruction, count_tokens, context_length, max_new_tokens)
