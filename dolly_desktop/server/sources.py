"""`"documents": NAME` on serve's endpoints: the passage found in document collections, and the
chunks it was made of for the response's `sources`.

The search and the packing are the ones `generate --docs` uses (documents/retrieve.py). They run
on a worker thread (SQLite, the tokenizer): the event loop goes on answering everyone else,
even while the index is locked by an indexing process (up to its busy timeout).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dolly_desktop.documents.index import BUSY_TIMEOUT_S, DocIndex, Hit, default_path
from dolly_desktop.documents.retrieve import CANDIDATES, Bm25Retriever, pack
from dolly_desktop.errors import DollyError
from dolly_desktop.history.runs import source_records
from dolly_desktop.server.errors import ApiError

log = logging.getLogger(__name__)

FIELD = "documents"


@dataclass
class Found:
    passage: str = ""
    sources: list[dict[str, Any]] = field(default_factory=list)


def client_sources(hits: Sequence[Hit]) -> list[dict[str, Any]]:
    """The chunks as the history keeps them, for a client: without the server's own path to
    the file (`rel` says where it is in its collection), with its anchor for a person."""
    return [
        {k: v for k, v in record.items() if k != "file"} | {"anchor": h.anchor()}
        for h, record in zip(hits, source_records(hits), strict=True)
    ]


async def find_passage(
    names: Sequence[str],
    instruction: str,
    count_tokens: Callable[[str], int],
    context_length: int,
    max_new_tokens: int,
    fallback: bool,
) -> Found:
    """The passage for `instruction` from these collections, on a worker thread. An unknown
    collection, or nothing that matches or fits (unless `fallback`), is an ApiError (400)."""
    return await asyncio.to_thread(
        _find, names, instruction, count_tokens, context_length, max_new_tokens, fallback
    )


def _find(
    names: Sequence[str],
    instruction: str,
    count_tokens: Callable[[str], int],
    context_length: int,
    max_new_tokens: int,
    fallback: bool,
) -> Found:
    t0 = time.perf_counter()
    path = default_path()
    if not path.is_file():  # not created by a request: nothing is written here
        raise ApiError(
            400,
            f"There is no collection {names[0]!r}: this server has no document collections "
            "yet (dolly-desktop docs add NAME FOLDER).",
            FIELD,
            code="collection_not_found",
        )
    try:
        _wait_for_unlocked(path)
        with DocIndex(path) as ix:  # an unknown name: DollyError, naming the known ones
            hits = Bm25Retriever(ix).search(names, instruction, CANDIDATES)
    except DollyError as e:
        code = "collection_not_found" if "no collection" in str(e) else None
        raise ApiError(400, str(e), FIELD, code=code) from e
    except sqlite3.OperationalError as e:  # still locked after the busy timeout
        log.warning("document index unavailable: %s", e)
        raise ApiError(503, "The document index is busy; try again shortly.", FIELD,
                       kind="server_error") from e  # fmt: skip
    passage = pack(hits, instruction, count_tokens, context_length, max_new_tokens)
    log.info("documents %s: %d of %d chunks, %d prompt tokens in %.0f ms", ", ".join(names),
             len(passage.hits), len(hits), passage.prompt_tokens,
             (time.perf_counter() - t0) * 1000)  # fmt: skip
    if not passage.hits and not fallback:
        why = (
            "matches the instruction"
            if not hits
            else f"fits beside the instruction and max_tokens ({max_new_tokens})"
        )
        raise ApiError(
            400,
            f'Nothing in {", ".join(names)} {why}; send "documents_fallback": true to '
            "answer without a passage.",
            FIELD,
            code="no_matching_documents",
        )
    return Found(passage.text, client_sources(passage.hits))


def _wait_for_unlocked(path: Path) -> None:
    """Wait (up to the index's busy timeout) while another process holds the index locked.
    DocIndex would take a lock that outlasts its timeout for damage and set the file aside;
    a request must never do that, so this read-only look goes first."""
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
    try:
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    finally:
        db.close()
