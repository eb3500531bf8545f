"""A file -> its chunks, or why it is skipped: the part of indexing that needs no database
(read, hash, parse, cut and count), so it can run in worker processes while the indexing one
writes to SQLite.

Indexing is CPU-bound in two near-equal halves: this one (Python: splitting words, counting
them) and FTS5's own tokenizing on insert, which only the process holding the write
transaction can do. With a pool, the two run side by side; the writes stay in file order, one
commit per file. A pool costs a process start (~0.5 s), so only big jobs get one.

Workers are spawned: a script that indexes needs the usual `if __name__ == "__main__":` guard
(the console scripts, the frozen app's launcher and pytest have it); without one the workers
fail to start and indexing carries on in one process (DocIndex.index).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass

from dolly_desktop.documents.chunk import Chunk, TokenCounter, chunk_blocks
from dolly_desktop.documents.parse import MAX_FILE_BYTES, Skipped, kind_of, parse

POOL_MIN_BYTES = 8 * 2**20  # less than this to (re)index: no worker processes
POOL_MIN_FILES = 4
MAX_WORKERS = 3
AHEAD_PER_WORKER = 3  # files prepared ahead of the writes, per worker (bounds memory)
MAX_KNOWN = 1000  # digests a worker is told it need not parse (files that may have moved)


@dataclass
class Prepared:
    size: int = 0  # bytes read
    digest: str | None = None  # None: not read
    chunks: list[Chunk] | None = None  # None: not parsed (skipped, or its digest was known)
    reason: str | None = None  # why it is skipped


def prepare(
    path: str, counter: TokenCounter, known: frozenset[str] | set[str] = frozenset()
) -> Prepared:
    """Read, hash and (unless its digest is in `known`: the same bytes are indexed already)
    parse and chunk one file."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        return Prepared(reason=f"cannot be read: {e.strerror or e}")
    if len(data) > MAX_FILE_BYTES:
        return Prepared(len(data), reason=f"larger than {MAX_FILE_BYTES // 2**20} MiB")
    p = Prepared(len(data), hashlib.sha256(data).hexdigest())
    if p.digest in known:
        return p
    kind = kind_of(path)
    assert kind is not None
    try:
        p.chunks = chunk_blocks(parse(data, kind), counter)
    except Skipped as e:
        p.reason = str(e)
    return p


_counter: TokenCounter | None = None  # a worker's own


def _start_worker(tokenizer_json: str) -> None:
    global _counter
    _counter = TokenCounter(tokenizer_json)


def _prepare_in_worker(path: str, known: frozenset[str]) -> Prepared:
    assert _counter is not None
    return prepare(path, _counter, known)


def workers_for(sizes: Sequence[int]) -> int:
    """How many worker processes a job of files of these sizes is worth (0: none)."""
    if len(sizes) < POOL_MIN_FILES or sum(sizes) < POOL_MIN_BYTES:
        return 0
    return max(1, min(MAX_WORKERS, (os.cpu_count() or 1) - 1))


class Pool:
    """Prepares files in worker processes, ahead of the caller, handing them back in order.

    `results(jobs)` yields one Prepared per (path, known) job, in order; the next jobs are
    already under way meanwhile. Leaving early (cancel) drops the ones not yet handed back."""

    def __init__(self, counter: TokenCounter, workers: int) -> None:
        # spawn, never fork: the window's process has threads (Qt, the engine) a fork would
        # copy mid-flight. The frozen app calls freeze_support (packaging/launcher.py).
        self._ex = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(str(counter.path),),
        )
        self.ahead = workers * AHEAD_PER_WORKER

    def results(self, jobs: Iterator[tuple[str, frozenset[str]]]) -> Iterator[Prepared]:
        pending: deque[Future[Prepared]] = deque()
        for job in jobs:
            pending.append(self._ex.submit(_prepare_in_worker, *job))
            if len(pending) >= self.ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def close(self) -> None:
        self._ex.shutdown(wait=True, cancel_futures=True)
