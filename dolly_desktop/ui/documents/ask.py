"""The passage for one question, found off the GUI thread: the picked collections are
searched and the best chunks packed within the budget by documents.retrieve.pack, the same
packer `generate --docs` uses; the chunks used go to the history as history.runs records."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dolly_desktop.documents.index import DocIndex
from dolly_desktop.documents.retrieve import CANDIDATES, Bm25Retriever, Passage, pack
from dolly_desktop.generation.prompt import build_prompt
from dolly_desktop.history.runs import source_records
from dolly_desktop.models.cancel import Cancelled


@dataclass(frozen=True)
class Found:
    names: tuple[str, ...]
    passage: Passage  # empty when nothing matched, or nothing fitted
    matched: bool  # some chunk matched the question (it may still not have fitted)
    base_tokens: int  # the prompt without a passage
    max_new: int

    @property
    def sources(self) -> list[dict[str, Any]]:
        return source_records(self.passage.hits)

    @property
    def passage_tokens(self) -> int:
        return self.passage.prompt_tokens - self.base_tokens if self.passage.hits else 0

    def nothing(self) -> str:
        """Why there is no passage, in one sentence (as `generate --docs` says it)."""
        names = ", ".join(self.names)
        if not self.matched:
            return f"Nothing in {names} matches the instruction"
        return f"No passage from {names} fits beside the instruction and {self.max_new} new tokens"


def find_passage(
    names: Sequence[str],
    instruction: str,
    count_tokens: Callable[[str], int],
    context_length: int,
    max_new: int,
    cancel: threading.Event,
    index_path: str | None = None,
) -> Found:
    """Search `names` for `instruction` and pack what fits. Its own connection: a Job's
    thread, never the GUI's."""
    with DocIndex(index_path) as ix:
        hits = Bm25Retriever(ix).search(names, instruction, CANDIDATES)
    if cancel.is_set():
        raise Cancelled()
    base = count_tokens(build_prompt(instruction))
    p = pack(hits, instruction, count_tokens, context_length, max_new) if hits else Passage()
    return Found(tuple(names), p, bool(hits), base, max_new)
