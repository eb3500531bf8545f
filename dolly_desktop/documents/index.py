"""Collections of a person's folders and files, indexed in SQLite FTS5 (bm25 ranking).

One database, `documents.sqlite3` in the data folder. Indexing is incremental: a file whose
path, size and mtime are unchanged is not read again; a changed one is hashed (same bytes:
only its stat is updated), else parsed and chunked again; a file that moved keeps its chunks
(same bytes under a new path); a deleted one leaves the index. Every file is its own
transaction, so an index that is cancelled or killed stays usable and the next run carries on.

User text never reaches FTS5's query syntax: `match_expression` keeps the words and quotes
each one.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from dolly_desktop import paths
from dolly_desktop.documents.chunk import TokenCounter
from dolly_desktop.documents.parse import MAX_FILE_BYTES, kind_of
from dolly_desktop.documents.prepare import MAX_KNOWN, Pool, Prepared, prepare, workers_for
from dolly_desktop.errors import DollyError

log = logging.getLogger(__name__)

FILE_NAME = "documents.sqlite3"
BUSY_TIMEOUT_S = 10.0
NAME_RE = re.compile(r"^[\w][\w .-]{0,63}$")
MAX_QUERY_TERMS = 32
MAX_TERM_CHARS = 64
BM25_WEIGHTS = (1.0, 0.5, 0.5)  # body, heading, file name
# bm25 scores every chunk holding any word of the query (some microseconds each: its length
# is looked up per chunk), so a search takes the question's words rarest first while the
# chunks holding them add up to at most ROW_BUDGET, and always the rarest one. The words left
# out are the commonest, which add least to bm25. (A fixed share, 5% of the chunks, let a
# question of 3-4 middling words score 20,000 chunks at 200k: p95 4x over budget. Ranking the
# candidates again by all the words through FTS5, one rowid at a time, cost ~5 ms a chunk:
# tried, gone.) A question whose rarest word is in more chunks than ROW_BUDGET (words found
# nearly everywhere) looks for chunks holding all of its rarest words instead (_prune): at
# 200k chunks of a small vocabulary, p50 17.7 -> 6.3 ms, p95 37.5 -> 24.8 ms, side by side.
# How many chunks hold a word is estimated from one chunk in DF_SAMPLE of each
# file (seq 0, 8, 16, ...): counting every chunk's words was a fifth of the indexing time.
ROW_BUDGET = 2000
DF_SAMPLE = 8

# Append-only: each entry moves the database one version on (PRAGMA user_version).
MIGRATIONS: list[str] = [
    """
    CREATE TABLE collections(
        id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, created REAL NOT NULL);
    CREATE TABLE roots(
        collection_id INTEGER NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
        path TEXT NOT NULL, PRIMARY KEY(collection_id, path));
    CREATE TABLE files(
        id INTEGER PRIMARY KEY,
        collection_id INTEGER NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
        path TEXT NOT NULL, rel TEXT NOT NULL, size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL, chunks INTEGER NOT NULL,
        indexed REAL NOT NULL, UNIQUE(collection_id, path));
    CREATE TABLE chunks(
        id INTEGER PRIMARY KEY,
        file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL, page INTEGER, heading TEXT NOT NULL, tokens INTEGER NOT NULL);
    CREATE INDEX chunks_by_file ON chunks(file_id);
    CREATE VIRTUAL TABLE chunk_text USING fts5(
        body, heading, name, tokenize = 'porter unicode61 remove_diacritics 2');
    CREATE TABLE skipped(
        collection_id INTEGER NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
        path TEXT NOT NULL, reason TEXT NOT NULL, PRIMARY KEY(collection_id, path));
    """,
    # How many chunks hold each word (as the query sees words, unstemmed; '' counts all
    # chunks): lets a search leave out words so common they barely rank (PRUNE_FRACTION).
    # Chunks indexed before this version are not counted: their words are never left out.
    """
    CREATE TABLE terms(term TEXT PRIMARY KEY, df INTEGER NOT NULL) WITHOUT ROWID;
    INSERT INTO terms SELECT '', count(*) FROM chunks;
    """,
    # Words counted in a sample of the chunks (DF_SAMPLE), only for files marked `sampled`:
    # the counts so far are dropped (their files are not marked, so never subtracted).
    """
    ALTER TABLE files ADD COLUMN sampled INTEGER NOT NULL DEFAULT 0;
    DELETE FROM terms;
    INSERT INTO terms VALUES ('', 0);
    """,
    # '*' counts all chunks ('' the sampled ones): the shares of the sample scale to rows.
    """
    INSERT INTO terms SELECT '*', count(*) FROM chunks;
    """,
]

# Words that say nothing about which passage answers: a question made only of these keeps
# them all.
_STOP = """a an and are as at be been but by can could did do does for from had has have how i if
    in into is it its me my no not of on or our please so than that the their them then there
    these they this to was we were what when where which who whom why will with would you your
    tell about give explain describe summarize list"""
STOPWORDS = frozenset(_STOP.split())
_TERM = re.compile(r"[^\W_]+")


def query_words(question: str) -> list[str]:
    """The words of a question that a search looks for: runs of letters and digits,
    lower-cased, de-duplicated, stop words dropped (all kept if nothing else is left)."""
    words = list(dict.fromkeys(_words(question)))
    return ([w for w in words if w not in STOPWORDS] or words)[:MAX_QUERY_TERMS]


def quote(words: Sequence[str], join: str = " OR ") -> str | None:
    """Words as an FTS5 query that can match but never parse as syntax: each one a quoted
    string (quotes doubled), joined by OR for bm25 to rank (or AND: chunks holding them all).
    None for no words."""
    return join.join('"' + w.replace('"', '""') + '"' for w in words) or None


def match_expression(question: str) -> str | None:
    """`question` as an FTS5 query of its words only (query_words, quote)."""
    return quote(query_words(question))


def _words(text: str) -> list[str]:
    return [w[:MAX_TERM_CHARS] for w in _TERM.findall(text.lower())]


def _chunk_words(texts: Sequence[str]) -> Counter[str]:
    """In how many of these texts each word occurs, and '' for how many texts."""
    counts: Counter[str] = Counter()
    for t in texts:  # as _words (checked in the tests), faster
        words = set(_TERM.findall(t.lower()))
        if max(map(len, words), default=0) > MAX_TERM_CHARS:
            words = {w[:MAX_TERM_CHARS] for w in words}
        counts.update(words)
    counts[""] = len(texts)
    return counts


@dataclass(frozen=True)
class Hit:
    chunk_id: int
    collection: str
    path: str  # absolute, as found
    rel: str  # relative to the folder it was found under
    page: int | None
    heading: str
    text: str
    tokens: int
    score: float  # bm25: lower is better

    def anchor(self) -> str:
        """Where the chunk is, for a person: file, then page or section."""
        where = self.rel
        if self.page is not None:
            where += f", page {self.page}"
        if self.heading:
            where += f", section “{self.heading}”"
        return where


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    roots: list[str]
    files: int
    chunks: int
    bytes: int
    skipped: int


@dataclass
class Progress:
    files_done: int = 0
    files_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    skipped: int = 0
    current: str = ""


@dataclass
class IndexReport:
    files: int = 0  # supported files found
    added: int = 0
    changed: int = 0
    unchanged: int = 0
    renamed: int = 0
    removed: int = 0
    chunks_added: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    cancelled: bool = False
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def line(self) -> str:
        s = (
            f"{self.files} files: {self.added} new, {self.changed} changed, "
            f"{self.unchanged} unchanged, {self.renamed} moved, {self.removed} removed; "
            f"{self.chunks_added} chunks added, {self.bytes_read / 1e6:.1f} MB read in "
            f"{self.seconds:.1f} s; {len(self.skipped)} skipped"
        )
        return s + (" (cancelled: what was done is kept)" if self.cancelled else "")


ProgressCallback = Callable[[Progress], None]


def default_path() -> Path:
    return paths.data_dir() / FILE_NAME


class DocIndex:
    """The collections and their index. One connection; use from one thread at a time."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as e:  # damaged: set it aside untouched, start afresh
            aside = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
            log.warning("document index %s unusable (%s): set aside as %s", self.path, e, aside)
            os.replace(self.path, aside)
            for ext in ("-wal", "-shm"):
                Path(str(self.path) + ext).unlink(missing_ok=True)
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # A commit is not synced to disk at once (WAL: a crash of the app or a kill loses
            # nothing; a power cut may lose the last files, never the index's consistency).
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise DollyError(
                    f"{self.path} was written by a newer Dolly Desktop: update the app."
                )
            for i in range(version, len(MIGRATIONS)):
                db.execute("BEGIN IMMEDIATE")
                _run_script(db, MIGRATIONS[i])
                db.execute(f"PRAGMA user_version={i + 1}")
                db.execute("COMMIT")
        except BaseException:
            db.close()
            raise
        return db

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> DocIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- collections ---------------------------------------------------------------------

    def add(self, name: str, sources: Sequence[str | Path]) -> list[str]:
        """Create collection `name` (or add to it) with these folders and files; returns its
        roots. Every path must exist."""
        name = name.strip()
        if not NAME_RE.match(name):
            raise DollyError(
                f"{name!r} is not a collection name: use letters, digits, spaces, '.', '-' or "
                "'_' (up to 64, starting with a letter or digit)."
            )
        roots = []
        for s in sources:
            p = Path(s).expanduser()
            if not p.exists():
                raise DollyError(f"There is nothing at {p}.")
            roots.append(str(p.absolute()))
        if not roots:
            raise DollyError("Give at least one folder or file for the collection.")
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "INSERT OR IGNORE INTO collections(name, created) VALUES (?, ?)",
                (name, time.time()),
            )
            cid = self._id(name)
            db.executemany("INSERT OR IGNORE INTO roots VALUES (?, ?)", [(cid, r) for r in roots])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return self.roots(name)

    def remove(self, name: str) -> None:
        cid = self._id(name)
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for (file_id,) in db.execute("SELECT id FROM files WHERE collection_id = ?", (cid,)):
                self._delete_file(file_id)
            db.execute("DELETE FROM collections WHERE id = ?", (cid,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def names(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT name FROM collections ORDER BY name")]

    def roots(self, name: str) -> list[str]:
        cid = self._id(name)
        q = "SELECT path FROM roots WHERE collection_id = ? ORDER BY path"
        return [r[0] for r in self._db.execute(q, (cid,))]

    def info(self, name: str) -> CollectionInfo:
        cid = self._id(name)
        files, chunks, size = self._db.execute(
            "SELECT count(*), coalesce(sum(chunks), 0), coalesce(sum(size), 0) FROM files "
            "WHERE collection_id = ?",
            (cid,),
        ).fetchone()
        skipped = self._db.execute(
            "SELECT count(*) FROM skipped WHERE collection_id = ?", (cid,)
        ).fetchone()[0]
        return CollectionInfo(name, self.roots(name), files, chunks, size, skipped)

    def files(self, name: str) -> list[tuple[str, int, int]]:
        """(path relative to its folder, bytes, chunks) of every indexed file."""
        cid = self._id(name)
        q = "SELECT rel, size, chunks FROM files WHERE collection_id = ? ORDER BY rel"
        return list(self._db.execute(q, (cid,)))

    def skipped(self, name: str) -> list[tuple[str, str]]:
        cid = self._id(name)
        q = "SELECT path, reason FROM skipped WHERE collection_id = ? ORDER BY path"
        return list(self._db.execute(q, (cid,)))

    def check(self) -> None:
        """Raise if the database or its full-text index is inconsistent."""
        (ok,) = self._db.execute("PRAGMA integrity_check").fetchone()
        if ok != "ok":
            raise DollyError(f"The document index is damaged: {ok}")
        self._db.execute("INSERT INTO chunk_text(chunk_text, rank) VALUES ('integrity-check', 1)")
        n_chunks = self._db.execute("SELECT count(*) FROM chunks").fetchone()[0]
        n_text = self._db.execute("SELECT count(*) FROM chunk_text").fetchone()[0]
        if n_chunks != n_text:
            raise DollyError(f"The document index has {n_chunks} chunks but {n_text} texts.")
        counted = self._db.execute("SELECT df FROM terms WHERE term = ''").fetchone()
        sampled = self._db.execute(
            "SELECT count(*) FROM chunks JOIN files f ON f.id = file_id "
            f"WHERE f.sampled AND seq % {DF_SAMPLE} = 0"
        ).fetchone()[0]
        if counted is None or counted[0] != sampled:
            raise DollyError(f"The document index counts {counted} chunks of {sampled}.")
        every = self._db.execute("SELECT df FROM terms WHERE term = '*'").fetchone()
        if every is None or every[0] != n_chunks:
            raise DollyError(f"The document index counts {every} chunks of {n_chunks}.")

    def _id(self, name: str) -> int:
        row = self._db.execute("SELECT id FROM collections WHERE name = ?", (name,)).fetchone()
        if row is None:
            known = ", ".join(self.names()) or "none yet (dolly-desktop docs add NAME FOLDER)"
            raise DollyError(f"There is no collection {name!r}. Collections: {known}.")
        return row[0]

    # -- indexing ------------------------------------------------------------------------

    def index(
        self,
        name: str,
        counter: TokenCounter,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> IndexReport:
        """Bring collection `name`'s index up to date with its folders (see the module)."""
        t0 = time.perf_counter()
        cid = self._id(name)
        db = self._db
        report = IndexReport()
        found: list[tuple[str, str, os.stat_result]] = []
        skips: dict[str, str] = {}
        roots = self.roots(name)
        # A folder that is not there (a drive not plugged in) keeps its files' chunks.
        absent = [r for r in roots if not os.path.lexists(r)]
        for r in absent:
            skips[r] = "not found (a drive not connected?): its indexed files are kept"
        for path, rel, st, reason in _walk([r for r in roots if r not in absent]):
            if reason is not None:
                skips[path] = reason
            else:
                assert st is not None
                found.append((path, rel, st))
        known = {
            r[1]: r
            for r in db.execute(
                "SELECT id, path, size, mtime_ns, sha256 FROM files WHERE collection_id = ?",
                (cid,),
            )
        }
        seen = {p for p, _, _ in found}
        missing = {
            p: r
            for p, r in known.items()
            if p not in seen and not any(_inside(p, a) for a in absent)
        }
        by_hash = {r[4]: r for r in missing.values()}
        prog = Progress(files_total=len(found), bytes_total=sum(st.st_size for *_, st in found))
        report.files = len(found)
        for path, reason in skips.items():  # before the files: a kill keeps these too
            self._skip(cid, path, reason)

        def unchanged(path: str, st: os.stat_result) -> bool:
            row = known.get(path)
            return row is not None and row[2] == st.st_size and row[3] == st.st_mtime_ns

        todo = [(path, st) for path, _, st in found if not unchanged(path, st)]
        workers = workers_for([st.st_size for _, st in todo])
        pool = Pool(counter, workers) if workers else None
        # In a pool, files are read and chunked ahead, told which digests need no parsing
        # (the file's own, or those of files that may have moved here).
        ready = (
            pool.results((p, _needless(known.get(p), by_hash)) for p, _ in todo)
            if pool is not None
            else None
        )
        try:
            for path, rel, st in found:
                if cancel is not None and cancel.is_set():
                    report.cancelled = True
                    break
                prog.current = rel
                if progress is not None:
                    progress(prog)
                if unchanged(path, st):
                    report.unchanged += 1
                else:
                    prepared = None
                    if ready is not None:
                        try:
                            prepared = next(ready)
                        except BrokenProcessPool as e:  # a script without a __main__ guard
                            log.warning("indexing in one process: workers failed (%s)", e)
                            ready = None
                    reason = self._index_file(
                        cid, path, rel, st, known.get(path), by_hash, missing, counter, report,
                        prepared,
                    )  # fmt: skip
                    if reason is not None:
                        skips[path] = reason
                        prog.skipped += 1
                prog.files_done += 1
                prog.bytes_done += st.st_size
        finally:
            if pool is not None:
                pool.close()
        if not report.cancelled:
            for row in missing.values():
                self._transaction(lambda r=row: self._delete_file(r[0]))
                report.removed += 1
            self._transaction(
                lambda: db.execute(
                    "DELETE FROM skipped WHERE collection_id = ? AND path NOT IN "
                    "(SELECT value FROM json_each(?))",
                    (cid, _json_list(skips)),
                )
            )
        prog.skipped = len(skips)
        prog.current = ""
        if progress is not None:
            progress(prog)
        report.skipped = sorted(skips.items())
        report.seconds = time.perf_counter() - t0
        return report

    def _index_file(
        self,
        cid: int,
        path: str,
        rel: str,
        st: os.stat_result,
        row: tuple | None,
        by_hash: dict[str, tuple],
        missing: dict[str, tuple],
        counter: TokenCounter,
        report: IndexReport,
        ready: Prepared | None = None,
    ) -> str | None:
        """Index one new or changed file in its own transaction; the skip reason, if any.
        `ready`: the file already read and chunked (prepare), else it is done here."""
        db = self._db
        p = ready if ready is not None else prepare(path, counter, _needless(row, by_hash))
        report.bytes_read += p.size
        if p.digest is None:  # unreadable, or too large
            reason = p.reason or "cannot be read"
            self._transaction(lambda: self._forget(cid, path, row, reason))
            return reason
        digest = p.digest
        stamp = (p.size, st.st_mtime_ns)
        if row is not None and row[4] == digest:  # touched, not changed
            self._transaction(
                lambda: db.execute(
                    "UPDATE files SET size = ?, mtime_ns = ? WHERE id = ?", (*stamp, row[0])
                )
            )
            report.unchanged += 1
            return None
        moved = by_hash.pop(digest, None) if row is None else None
        if moved is not None and moved[1] in missing:  # the same bytes under a new name
            del missing[moved[1]]

            def rename() -> None:
                db.execute(
                    "UPDATE files SET path = ?, rel = ?, size = ?, mtime_ns = ? WHERE id = ?",
                    (path, rel, *stamp, moved[0]),
                )
                db.execute(
                    "UPDATE chunk_text SET name = ? WHERE rowid IN "
                    "(SELECT id FROM chunks WHERE file_id = ?)",
                    (_name_words(rel), moved[0]),
                )
                db.execute("DELETE FROM skipped WHERE collection_id = ? AND path = ?", (cid, path))

            self._transaction(rename)
            report.renamed += 1
            return None
        if p.chunks is None and p.reason is None:  # not parsed: its bytes seemed indexed
            p = prepare(path, counter)
        if p.reason is not None or p.chunks is None:
            reason = p.reason or "no text"
            self._transaction(lambda: self._forget(cid, path, row, reason))
            return reason
        chunks = p.chunks

        def write() -> None:
            if row is not None:
                self._delete_file(row[0])
            cur = db.execute(
                "INSERT INTO files(collection_id, path, rel, size, mtime_ns, sha256, chunks, "
                "indexed, sampled) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1)",
                (cid, path, rel, *stamp, digest, len(chunks), time.time()),
            )
            file_id = cur.lastrowid
            name = _name_words(rel)
            # Ids handed out here, inside this write transaction: both tables in one go.
            first = db.execute("SELECT coalesce(max(id), 0) + 1 FROM chunks").fetchone()[0]
            db.executemany(
                "INSERT INTO chunks(id, file_id, seq, page, heading, tokens) VALUES (?,?,?,?,?,?)",
                [
                    (first + i, file_id, i, c.page, c.heading, c.tokens)
                    for i, c in enumerate(chunks)
                ],
            )
            db.executemany(
                "INSERT INTO chunk_text(rowid, body, heading, name) VALUES (?, ?, ?, ?)",
                [(first + i, c.text, c.heading, name) for i, c in enumerate(chunks)],
            )
            db.execute("DELETE FROM skipped WHERE collection_id = ? AND path = ?", (cid, path))
            counts = _chunk_words([c.text for c in chunks[::DF_SAMPLE]])
            counts["*"] = len(chunks)
            self._count_terms(counts, +1)

        self._transaction(write)
        report.chunks_added += len(chunks)
        if row is None:
            report.added += 1
        else:
            report.changed += 1
        return None

    def _forget(self, cid: int, path: str, row: tuple | None, reason: str) -> None:
        if row is not None:  # a file that was indexed and now cannot be: its chunks go
            self._delete_file(row[0])
        self._skip(cid, path, reason, transaction=False)

    def _skip(self, cid: int, path: str, reason: str, transaction: bool = True) -> None:
        def do() -> None:
            self._db.execute("INSERT OR REPLACE INTO skipped VALUES (?, ?, ?)", (cid, path, reason))

        self._transaction(do) if transaction else do()

    def _count_terms(self, counts: Counter[str], sign: int) -> None:
        self._db.executemany(
            "INSERT INTO terms VALUES (?, ?) ON CONFLICT(term) DO UPDATE SET df = df + excluded.df",
            [(t, sign * n) for t, n in counts.items()],
        )

    def _delete_file(self, file_id: int) -> None:
        bodies = self._db.execute(
            "SELECT body FROM chunk_text WHERE rowid IN (SELECT c.id FROM chunks c JOIN files f "
            f"ON f.id = c.file_id WHERE f.id = ? AND f.sampled AND c.seq % {DF_SAMPLE} = 0)",
            (file_id,),
        )
        counts = _chunk_words([b for (b,) in bodies])
        q = "SELECT chunks FROM files WHERE id = ?"
        counts["*"] = self._db.execute(q, (file_id,)).fetchone()[0]
        self._count_terms(+counts, -1)
        self._db.execute(
            "DELETE FROM chunk_text WHERE rowid IN (SELECT id FROM chunks WHERE file_id = ?)",
            (file_id,),
        )
        self._db.execute("DELETE FROM files WHERE id = ?", (file_id,))

    def _transaction(self, work: Callable[[], object]) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            work()
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # -- searching -----------------------------------------------------------------------

    def search(self, names: Sequence[str], question: str, limit: int = 10) -> list[Hit]:
        """The best `limit` chunks of these collections for `question`, best first."""
        ids = sorted({self._id(n) for n in names})
        words, all_of = self._prune(query_words(question))
        if not words or not ids:
            return []
        every = ids == [r[0] for r in self._db.execute("SELECT id FROM collections ORDER BY id")]
        # The best chunks first, from the full-text index alone; then their files, dropping
        # other collections' (fetching more to allow for them; all of them if too few stay).
        fetch = limit if every else limit * 8

        def run(expr: str | None) -> list[Hit]:
            hits = self._search(expr, ids, fetch, limit)
            if len(hits) < limit and not every:
                hits = self._search(expr, ids, -1, limit)
            return hits

        if not all_of:
            return run(quote(words))
        # Every word nearly everywhere: the chunks holding them all, then (too few of those)
        # the rarest word's, as before this rule (one word's chunks: no dearer than that).
        hits = run(quote(words, " AND "))
        if len(hits) < limit:
            have = {h.chunk_id for h in hits}
            hits += [h for h in run(quote(words[:1])) if h.chunk_id not in have]
        return hits[:limit]

    def _search(self, expr: str, ids: list[int], fetch: int, limit: int) -> list[Hit]:
        w = ", ".join(str(x) for x in BM25_WEIGHTS)
        rows = self._db.execute(
            f"WITH top AS (SELECT rowid AS id, bm25(chunk_text, {w}) AS score FROM chunk_text "
            "WHERE chunk_text MATCH ? ORDER BY score LIMIT ?) "
            "SELECT c.id, col.name, f.path, f.rel, c.page, c.heading, t.body, c.tokens, "
            "top.score FROM top JOIN chunks c ON c.id = top.id "
            "JOIN chunk_text t ON t.rowid = top.id "
            "JOIN files f ON f.id = c.file_id JOIN collections col ON col.id = f.collection_id "
            f"WHERE f.collection_id IN ({','.join('?' * len(ids))}) ORDER BY top.score LIMIT ?",
            (expr, fetch, *ids, limit),
        )
        return [Hit(*r) for r in rows]

    def _prune(self, words: list[str]) -> tuple[list[str], bool]:
        """The question's words to look for, and whether a chunk must hold all of them (then
        rarest first) or any of them (then in the question's order). Rarest first while the
        chunks holding them add up to ROW_BUDGET (see there), the rarest always. When even
        the rarest is in more chunks than that (a question of words found nearly everywhere),
        bm25 would score them all: a chunk must then hold all of the rarest ones, as many as
        bring the chunks expected to hold them all (as if independent) within ROW_BUDGET."""
        if len(words) <= 1:
            return words, False
        marks = ",".join("?" * (len(words) + 2))
        q = f"SELECT term, df FROM terms WHERE term IN ({marks})"
        df = dict(self._db.execute(q, ["", "*", *words]))
        sampled, chunks = df.get("", 0), df.get("*", 0)
        if sampled <= 0 or chunks <= ROW_BUDGET:
            return words, False

        def rows(w: str) -> float:
            return df.get(w, 0) * chunks / sampled

        keep: set[str] = set()
        rarest_first = sorted(words, key=rows)
        if rows(rarest_first[0]) > ROW_BUDGET:
            expected = float(chunks)
            for w in rarest_first:
                keep.add(w)
                expected *= rows(w) / chunks
                if len(keep) > 1 and expected <= ROW_BUDGET:
                    break
            return [w for w in rarest_first if w in keep], True
        spent = 0.0
        for w in rarest_first:
            if keep and spent + rows(w) > ROW_BUDGET:
                break
            keep.add(w)
            spent += rows(w)
        return [w for w in words if w in keep], False


def _needless(row: tuple | None, by_hash: dict[str, tuple]) -> frozenset[str]:
    """Digests whose bytes need no parsing for a file: its own as indexed (touched, not
    changed), or, for a new file, those of files gone missing (it may be one of them, moved)."""
    if row is not None:
        return frozenset([row[4]])
    return frozenset(by_hash) if len(by_hash) <= MAX_KNOWN else frozenset()


def _run_script(db: sqlite3.Connection, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _json_list(items: object) -> str:
    import json

    return json.dumps(list(items))  # type: ignore[call-overload]


def _name_words(rel: str) -> str:
    return re.sub(r"[\W_]+", " ", rel).strip()


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _walk(
    roots: Sequence[str],
) -> Iterator[tuple[str, str, os.stat_result | None, str | None]]:
    """(path, path relative to its root, stat, None) for each file to index, and
    (path, rel, None, reason) for each one skipped. Hidden files and folders (a leading dot)
    are passed over silently; links to folders are not followed."""
    done: set[str] = set()
    for root in roots:
        if os.path.isfile(root) or (os.path.islink(root) and not os.path.isdir(root)):
            base, names = os.path.dirname(root), [os.path.basename(root)]
            yield from _files(base, base, names, done, explicit=True)
            continue
        real_root = os.path.realpath(root)
        for folder, dirs, files in os.walk(root, onerror=None):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for d in dirs:
                full = os.path.join(folder, d)
                outside = not _inside(os.path.realpath(full), real_root)
                if os.path.islink(full) and outside and full not in done:
                    done.add(full)
                    rel = os.path.relpath(full, root)
                    yield full, rel, None, "link leading outside the folder"
            names = sorted(f for f in files if not f.startswith("."))
            yield from _files(root, folder, names, done, explicit=False)


def _files(
    root: str, folder: str, names: list[str], done: set[str], explicit: bool
) -> Iterator[tuple[str, str, os.stat_result | None, str | None]]:
    real_root = os.path.realpath(root)
    under = "" if folder == root else os.path.relpath(folder, root) + os.sep  # once a folder
    for n in names:
        full = os.path.join(folder, n)
        if full in done:
            continue
        done.add(full)
        rel = under + n
        kind = kind_of(n)
        if kind is None:
            ext = os.path.splitext(n)[1].lower() or "no extension"
            yield full, rel, None, f"unsupported type ({ext})"
            continue
        if os.path.islink(full):
            target = os.path.realpath(full)
            if not explicit and not _inside(target, real_root):
                yield full, rel, None, "link leading outside the folder"
                continue
        try:
            st = os.stat(full)
        except OSError as e:
            yield full, rel, None, f"cannot be read: {e.strerror or e}"
            continue
        if not stat.S_ISREG(st.st_mode):
            yield full, rel, None, "not a regular file"
        elif st.st_size > MAX_FILE_BYTES:
            yield full, rel, None, f"larger than {MAX_FILE_BYTES // 2**20} MiB"
        else:
            yield full, rel, st, None
