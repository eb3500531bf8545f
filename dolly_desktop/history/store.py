"""Run history: every generation kept in SQLite, written while it streams, searchable.

One connection per History, shared under a lock by the GUI thread and the thread that streams
(openvino-genai may call back from its own thread). WAL mode lets several app processes write
at once. Nothing waits long for another process's lock: a run's save that cannot get it at once
is kept (the latest text only) and retried by a background thread for up to BUSY_TIMEOUT_S,
then given up with a notice; reads and the person's own changes wait `wait_s` (short for the
window, BUSY_TIMEOUT_S for the CLI) and then raise HistoryBusy. A file that cannot be used never
stops the app: it is set aside untouched (or, when merely locked, left alone) and the app
carries on with a fresh database.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TextIO

from dolly_desktop import paths
from dolly_desktop.errors import DollyError
from dolly_desktop.generation.engine import GenerationResult, ModelRef
from dolly_desktop.generation.metrics import metrics_text
from dolly_desktop.generation.params import GenerationParams

log = logging.getLogger(__name__)

FILE_NAME = "history.sqlite3"
FLUSH_INTERVAL_S = 1.0  # streaming text reaches the disk at most this often, plus the end
BUSY_TIMEOUT_S = 10.0  # a locked save is retried this long; opening and the CLI wait this long
WAIT_S = 0.25  # a read or a change asked for in the window waits this long for a lock
IMPORT_MAX_CHARS = 512 * 2**20  # an import reads at most this much (all of it is held at once)
IMPORT_MAX_LINE = 16 * 2**20  # one entry's line; a real one is far smaller
MAX_ID = 2**63 - 1  # SQLite's largest integer: no entry id is outside 1..MAX_ID
RETRY_FIRST_S, RETRY_MAX_S = 0.05, 0.5  # the background saver's pause between tries, doubling

Status = Literal["running", "end", "length", "cancelled", "interrupted", "error"]
STATUSES: tuple[str, ...] = ("running", "end", "length", "cancelled", "interrupted", "error")

# MIGRATIONS[n] takes a database from user_version n to n + 1. Append only; never edit one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE entries (
            id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a deleted id stays gone
            created_at TEXT NOT NULL,              -- ISO 8601 UTC, so text order is time order
            updated_at TEXT NOT NULL,              -- last write: when an interrupted run stopped
            finished_at TEXT,
            instruction TEXT NOT NULL,
            response TEXT NOT NULL DEFAULT '',
            params TEXT NOT NULL,                  -- GenerationParams.to_dict() as JSON
            model_name TEXT NOT NULL,
            model_precision TEXT NOT NULL,
            model_folder TEXT NOT NULL,
            device TEXT NOT NULL,
            input_tokens INTEGER,
            generated_tokens INTEGER,
            ttft_s REAL,
            tokens_per_s REAL,
            status TEXT NOT NULL,
            error TEXT,
            owner TEXT                             -- 'pid:run-token' while running
        )""",
        "CREATE INDEX entries_created ON entries (created_at)",
        """CREATE VIRTUAL TABLE entries_fts USING fts5 (
            instruction, response, content='entries', content_rowid='id',
            tokenize='unicode61 remove_diacritics 2')""",
        """CREATE TRIGGER entries_ai AFTER INSERT ON entries BEGIN
            INSERT INTO entries_fts (rowid, instruction, response)
            VALUES (new.id, new.instruction, new.response);
        END""",
        """CREATE TRIGGER entries_ad AFTER DELETE ON entries BEGIN
            INSERT INTO entries_fts (entries_fts, rowid, instruction, response)
            VALUES ('delete', old.id, old.instruction, old.response);
        END""",
        """CREATE TRIGGER entries_au AFTER UPDATE OF instruction, response ON entries BEGIN
            INSERT INTO entries_fts (entries_fts, rowid, instruction, response)
            VALUES ('delete', old.id, old.instruction, old.response);
            INSERT INTO entries_fts (rowid, instruction, response)
            VALUES (new.id, new.instruction, new.response);
        END""",
    ),
    # 2: the passage Dolly worked from (Input:), searchable with the instruction and response.
    (
        "ALTER TABLE entries ADD COLUMN context TEXT NOT NULL DEFAULT ''",
        "DROP TRIGGER entries_ai",
        "DROP TRIGGER entries_ad",
        "DROP TRIGGER entries_au",
        "DROP TABLE entries_fts",
        """CREATE VIRTUAL TABLE entries_fts USING fts5 (
            instruction, response, context, content='entries', content_rowid='id',
            tokenize='unicode61 remove_diacritics 2')""",
        "INSERT INTO entries_fts (entries_fts) VALUES ('rebuild')",
        """CREATE TRIGGER entries_ai AFTER INSERT ON entries BEGIN
            INSERT INTO entries_fts (rowid, instruction, response, context)
            VALUES (new.id, new.instruction, new.response, new.context);
        END""",
        """CREATE TRIGGER entries_ad AFTER DELETE ON entries BEGIN
            INSERT INTO entries_fts (entries_fts, rowid, instruction, response, context)
            VALUES ('delete', old.id, old.instruction, old.response, old.context);
        END""",
        """CREATE TRIGGER entries_au AFTER UPDATE OF instruction, response, context ON entries
        BEGIN
            INSERT INTO entries_fts (entries_fts, rowid, instruction, response, context)
            VALUES ('delete', old.id, old.instruction, old.response, old.context);
            INSERT INTO entries_fts (rowid, instruction, response, context)
            VALUES (new.id, new.instruction, new.response, new.context);
        END""",
    ),
    # 3: the document chunks a passage was made of (JSON list of {collection, file, rel, page,
    # heading, text}), so an answer stays explainable after its files change.
    ("ALTER TABLE entries ADD COLUMN sources TEXT NOT NULL DEFAULT '[]'",),
)
SCHEMA_VERSION = len(MIGRATIONS)

# Run tokens of this process's unfinished recorders: a 'running' row is live only if its
# writer is. A row with our pid but a token not here was written by an earlier process that
# had the same pid (containers reuse pids).
_LIVE_RUNS: set[str] = set()


@dataclass(frozen=True)
class Entry:
    id: int
    created_at: datetime  # UTC
    finished_at: datetime | None  # for an interrupted run: its last write
    instruction: str
    response: str
    params: GenerationParams
    model: ModelRef
    device: str
    input_tokens: int | None
    generated_tokens: int | None
    ttft_s: float | None
    tokens_per_s: float | None
    stop_reason: Status  # 'running' only while its writer is alive
    error: str | None
    context: str = ""  # the passage Dolly worked from, if any
    sources: tuple[dict[str, Any], ...] = ()  # the document chunks it was made of, if any

    def to_dict(self) -> dict[str, Any]:
        """The JSON Lines form (export and import)."""
        return {
            "id": self.id,
            "created_at": _iso(self.created_at),
            "finished_at": _iso(self.finished_at) if self.finished_at else None,
            "instruction": self.instruction,
            "context": self.context,
            "response": self.response,
            "params": self.params.to_dict(),
            "model": {
                "name": self.model.name,
                "precision": self.model.precision,
                "folder": self.model.folder,
            },
            "device": self.device,
            "input_tokens": self.input_tokens,
            "generated_tokens": self.generated_tokens,
            "ttft_s": self.ttft_s,
            "tokens_per_s": self.tokens_per_s,
            "stop_reason": self.stop_reason,
            "error": self.error,
            "sources": list(self.sources),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Entry:
        """Inverse of to_dict; raises KeyError, TypeError or ValueError on a bad record."""
        stop = d["stop_reason"]
        if stop not in STATUSES:
            raise ValueError(f"unknown stop_reason {stop!r}")
        return cls(
            id=int(d["id"]),
            created_at=_parse_time(d["created_at"]),
            finished_at=_parse_time(d["finished_at"]) if d.get("finished_at") else None,
            instruction=str(d["instruction"]),
            context=str(d.get("context") or ""),  # exports before contexts have none
            response=str(d["response"]),
            params=GenerationParams.from_dict(d["params"]),
            model=ModelRef(**d["model"]),
            device=str(d["device"]),
            input_tokens=d.get("input_tokens"),
            generated_tokens=d.get("generated_tokens"),
            ttft_s=d.get("ttft_s"),
            tokens_per_s=d.get("tokens_per_s"),
            # A run still going when exported will never finish in the importing database.
            stop_reason="interrupted" if stop == "running" else stop,
            error=d.get("error"),
            sources=tuple(dict(x) for x in d.get("sources") or ()),
        )

    def _source_lines(self) -> list[str]:
        return [_source_line(n, s) for n, s in enumerate(self.sources, 1)]

    def metrics_text(self, sep: str = ", ") -> str:
        """An interrupted run has no metrics: only what is known."""
        return metrics_text(
            self.generated_tokens, self.tokens_per_s, self.ttft_s, self.stop_reason, sep=sep
        )

    def to_markdown(self) -> str:
        when = self.created_at.astimezone().strftime("%Y-%m-%d %H:%M:%S")
        model = f"{self.model.name} {self.model.precision}".strip()
        params = ", ".join(f"{k}={v}" for k, v in self.params.to_dict().items())
        lines = [
            f"## #{self.id} · {when} · {model} on {self.device}",
            "",
            "### Instruction",
            "",
            self.instruction,
            "",
            *(["### Input", "", self.context, ""] if self.context else []),
            *(["### Sources", "", *self._source_lines(), ""] if self.sources else []),
            "### Response",
            "",
            self.response,
            "",
            f"*{self.metrics_text()}; {params}*",
        ]
        if self.error:
            lines += ["", f"Error: {self.error}"]
        return "\n".join(lines) + "\n"


class HistoryBusy(DollyError):
    """Another program holds the history's lock for longer than this caller may wait."""


Notify = Callable[[str], None]


class RunRecorder:
    """Writes one run's row: the text while it streams, then how it ended.

    `append` may be called from any thread; the text reaches the disk at most once per
    FLUSH_INTERVAL_S (the first piece at once), so a killed process keeps what was shown.
    A write never waits for another process's lock: what could not be written is kept (only
    the latest state of each column) and the History's background saver retries it.
    Used as a context manager, a block left without `finish` records the run as cancelled
    (KeyboardInterrupt or a normal exit) or failed (any other exception).
    """

    def __init__(
        self,
        history: History,
        row: dict[str, Any] | None,
        token: str = "",
        notify: Notify | None = None,
    ) -> None:
        self.entry_id: int | None = None  # None when history is off, or not inserted yet
        self.flushes = 0  # writes of streaming text so far
        self._history = history
        self._token = token
        self._notify = notify  # hears a notice that comes after the run (a save given up)
        self._row = row  # the columns to insert, until the row is in the file
        self._dirty: dict[str, Any] = {}  # columns not written yet
        self._failing_since: float | None = None  # first failed try of what is in _dirty
        self._parts: list[str] = []
        self._lock = threading.Lock()
        self._last_flush = float("-inf")
        self._closed = row is None

    @property
    def text(self) -> str:
        with self._lock:
            return "".join(self._parts)

    def append(self, piece: str) -> None:
        with self._lock:
            if self._closed:
                return
            self._parts.append(piece)
            now = time.monotonic()
            if now - self._last_flush >= FLUSH_INTERVAL_S:
                self._last_flush = now
                self.flushes += 1
                self._write(response="".join(self._parts))

    def finish(self, result: GenerationResult) -> None:
        self._close(
            result.stop_reason.value,
            response=result.text,
            input_tokens=result.input_tokens,
            generated_tokens=result.generated_tokens,
            ttft_s=result.ttft_s,
            tokens_per_s=result.tokens_per_s,
        )

    def fail(self, message: str) -> None:
        self._close("error", error=message)

    def cancel(self) -> None:
        """Stopped before a result came back: keep the text so far."""
        self._close("cancelled")

    def _close(self, status: str, **fields: Any) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            _LIVE_RUNS.discard(self._token)
            fields.setdefault("response", "".join(self._parts))
            self._write(status=status, finished_at=_iso(_now()), owner=None, **fields)

    def _write(self, **fields: Any) -> None:
        """Called with self._lock held. Losing history must never stop a generation."""
        self._dirty.update(fields)
        if self._failing_since is not None:
            return  # queued: the saver writes the latest state when it can
        try:
            self._save()
        except sqlite3.Error as e:
            if not _is_busy(e):
                self._dirty.clear()  # full disk, read-only: say so once and go on
                self._history._not_saved(e)
                return
            self._failing_since = time.monotonic()
            self._history._queue(self)

    def _save(self) -> None:
        """Write what is pending, without waiting for a lock (self._lock held)."""
        if self._row is not None:
            self.entry_id = self._history._insert({**self._row, **self._dirty}, wait=0)
            self._row = None
        elif self._dirty:
            self._history._update(self.entry_id, self._dirty)  # type: ignore[arg-type]
        self._dirty = {}
        self._failing_since = None

    def _retry(self) -> bool:
        """The saver's try: True when nothing is left to do for this run."""
        with self._lock:
            if self._failing_since is None:
                return True
            try:
                self._save()
                return True
            except sqlite3.Error as e:
                if _is_busy(e) and time.monotonic() - self._failing_since < BUSY_TIMEOUT_S:
                    return False
                # Given up: the next append (if the run goes on) tries again from scratch.
                self._dirty.clear()
                self._failing_since = None
                error = e
        self._history._not_saved(error)
        if self._notify is not None:
            for sentence in self._history.take_notices():
                try:
                    self._notify(sentence)
                except Exception:  # e.g. a window already gone: the log has it
                    log.warning("history: notice not delivered: %s", sentence)
        return True

    def __enter__(self) -> RunRecorder:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None or isinstance(exc, KeyboardInterrupt):
            self.cancel()
        else:
            lines = str(exc).strip().splitlines()
            self.fail(lines[0] if lines else type(exc).__name__)


class History:
    """The run history in `path` (default: the data folder). `enabled=False` keeps no history:
    nothing is read or written and no file is created, with the same API."""

    def __init__(
        self, path: Path | None = None, enabled: bool = True, wait_s: float | None = None
    ) -> None:
        self.path = Path(path) if path is not None else paths.data_dir() / FILE_NAME
        self.enabled = enabled
        # How long a read or a requested change waits for another process's lock before
        # HistoryBusy: short, for the GUI thread, unless the caller can wait (the CLI).
        self.wait_s = WAIT_S if wait_s is None else wait_s
        self._saver_cv = threading.Condition()
        self._waiting: set[RunRecorder] = set()  # runs whose save is queued
        self._saver: threading.Thread | None = None
        self.notice: str | None = None  # one sentence when the file could not be used
        self.read_only = False  # shown, but nothing new is saved
        self._told: set[str] = set()  # every sentence said, each handed out once
        self._pending: list[str] = []  # said, not yet handed out by take_notices()
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        self._wait_ms = -1  # the connection's busy timeout, set before each statement
        if enabled:
            self._db = self._open()
            if not self.read_only:
                try:
                    self._mark_interrupted()
                except (sqlite3.Error, HistoryBusy) as e:  # locked elsewhere: next start does it
                    log.warning("history: could not mark interrupted runs: %s", e)

    # ---- opening -------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        seen = _file_id(self.path)
        try:
            return _open_file_waiting(self.path)
        except _NewerSchema as e:
            return self._start_over(seen, "newer", f"was written by a newer Dolly Desktop (v{e})")
        except sqlite3.DatabaseError as e:
            if _is_corrupt(e):
                return self._start_over(seen, "corrupt", "is damaged")
            if _is_read_only(e):
                return self._read_only(e)
            return self._in_memory(f"cannot be used now ({e})")
        except OSError as e:
            return self._in_memory(f"cannot be opened ({e.strerror or e})")

    def _start_over(self, seen: object, kind: str, why: str) -> sqlite3.Connection:
        aside = _unused_name(self.path, f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}")
        # Only the file we looked at: another process starting at the same moment may already
        # have set it aside and started a fresh one, which must not be moved.
        ours = _file_id(self.path) == seen
        try:
            for suffix in ("", "-wal", "-shm") if ours else ():  # the WAL goes with its file
                src = Path(f"{self.path}{suffix}")
                if src.exists():
                    os.replace(src, f"{aside}{suffix}")
            conn = _open_file_waiting(self.path)
        except (sqlite3.Error, OSError, _NewerSchema) as e:
            return self._in_memory(f"{why} and could not be replaced ({e})")
        where = f" as {aside.name}" if ours else ""
        self._say(f"The history file {why}, so it was set aside{where} and a new one was started.")
        return conn

    def _in_memory(self, why: str) -> sqlite3.Connection:
        self._say(
            f"The history file {self.path} {why}, so this session's history is kept in memory only."
        )
        conn = _connect(":memory:")
        _migrate(conn)
        return conn

    def _read_only(self, e: sqlite3.Error) -> sqlite3.Connection:
        """A file we may read but not write (its mode, a read-only mount): show it as it is."""
        try:
            conn = _connect(str(self.path), read_only=True)
            _check_version(conn)
        except (sqlite3.Error, _NewerSchema) as again:
            return self._in_memory(f"cannot be used now ({again})")
        self.read_only = True
        self._say(f"History is not being saved: {self.path} is read-only ({e}).")
        return conn

    def _say(self, sentence: str) -> None:
        self.notice = sentence
        # The interface shows it (take_notices); the log keeps it without a second console line.
        log.info("%s", sentence)
        if sentence not in self._told:
            self._told.add(sentence)
            self._pending.append(sentence)

    def _not_saved(self, e: BaseException) -> None:
        self._say(f"History is not being saved: {_first_line(e)}.")

    def take_notices(self) -> list[str]:
        """Sentences not handed out before: each is shown to the person once, however often
        the same failure repeats."""
        with self._lock:
            pending, self._pending = self._pending, []
        return pending

    def _mark_interrupted(self) -> None:
        """Persist 'interrupted' for runs whose writer died, so a reused pid cannot revive them."""
        rows = self._query("SELECT id, owner FROM entries WHERE status = 'running'")
        for row in rows:
            if not _writer_alive(row["owner"]):
                self._exec(
                    "UPDATE entries SET status = 'interrupted', owner = NULL,"
                    " finished_at = updated_at WHERE id = ? AND status = 'running'",
                    (row["id"],),
                )

    def close(self) -> None:
        """Closes the file once queued saves are written or given up."""
        self.flush()
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- recording -----------------------------------------------------------------------

    def start_run(
        self,
        instruction: str,
        params: GenerationParams,
        model: ModelRef,
        device: str,
        context: str = "",
        notify: Notify | None = None,
        sources: Sequence[dict[str, Any]] = (),
    ) -> RunRecorder:
        """Insert a 'running' row now, so even a run killed at its first token is kept (or,
        when another process holds the lock, as soon as the saver can). `notify` hears a
        sentence that comes after the run ended (a save given up)."""
        if self._db is None:
            return RunRecorder(self, None)
        token = uuid.uuid4().hex
        now = _iso(_now())
        values = dict(
            created_at=now,
            updated_at=now,
            instruction=instruction.strip(),  # what the prompt was built from
            context=context.strip(),
            sources=json.dumps(list(sources), ensure_ascii=False),
            response="",
            params=json.dumps(params.to_dict()),
            model_name=model.name,
            model_precision=model.precision,
            model_folder=model.folder,
            device=device,
            status="running",
            owner=f"{os.getpid()}:{token}",
        )
        run = RunRecorder(self, values, token, notify)
        _LIVE_RUNS.add(token)
        with run._lock:
            run._write()  # at once, or queued when locked; full disk: said, and run on
            if run._row is not None and run._failing_since is None:  # not queued: given up
                run._closed = True
                _LIVE_RUNS.discard(token)
        return run

    def _update(self, entry_id: int, fields: dict[str, Any]) -> None:
        fields = {**fields, "updated_at": _iso(_now())}
        cols = ", ".join(f"{k} = ?" for k in fields)
        self._exec(f"UPDATE entries SET {cols} WHERE id = ?", (*fields.values(), entry_id), wait=0)

    def _insert(self, values: dict[str, Any], wait: float | None = None) -> int:
        if "response" in values:  # a queued insert carries the latest text: date it now
            values = {**values, "updated_at": _iso(_now())}
        cols = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        cur = self._exec(
            f"INSERT INTO entries ({cols}) VALUES ({marks})", tuple(values.values()), wait=wait
        )
        return int(cur.lastrowid)  # type: ignore[union-attr, arg-type]

    # ---- the background saver ------------------------------------------------------------

    def _queue(self, run: RunRecorder) -> None:
        """Retry `run`'s save in the background. The saver is not a daemon: a process that
        ends with a save queued waits for it (at most BUSY_TIMEOUT_S) instead of losing it."""
        with self._saver_cv:
            self._waiting.add(run)
            if self._saver is None or not self._saver.is_alive():
                self._saver = threading.Thread(
                    target=self._save_queued, name="history-saver", daemon=False
                )
                self._saver.start()
            self._saver_cv.notify_all()

    def _save_queued(self) -> None:
        pause = RETRY_FIRST_S
        while True:
            with self._saver_cv:
                if not self._waiting:
                    self._saver = None
                    self._saver_cv.notify_all()
                    return
                self._saver_cv.wait(pause)
                runs = list(self._waiting)
            for run in runs:
                try:
                    done = run._retry()
                except Exception:  # never leave a run queued for ever (close waits on it)
                    log.exception("history: a queued save failed")
                    run._failing_since = None
                    done = True
                if done:
                    with self._saver_cv:
                        # Unless queued again meanwhile (a later append failed after a give-up).
                        if run._failing_since is None:
                            self._waiting.discard(run)
            pause = min(pause * 2, RETRY_MAX_S)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued save is written or given up (at most `timeout` seconds);
        True when nothing is left queued."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._saver_cv:
            while self._waiting:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._saver_cv.wait(left)
        return True

    @property
    def saving(self) -> bool:
        """Saves are queued because another process holds the lock."""
        with self._saver_cv:
            return bool(self._waiting)

    # ---- reading -------------------------------------------------------------------------

    def list(self, limit: int = 200, query: str | None = None) -> list[Entry]:
        """Newest first; with `query`, only entries whose instruction or response has every
        word of it (each word also matches as a prefix, for search as you type)."""
        limit = max(0, min(limit, MAX_ID))
        if query is None or not query.strip():
            rows = self._query(
                "SELECT * FROM entries ORDER BY created_at DESC, id DESC LIMIT ?", (limit,)
            )
        else:
            rows = self._query(
                "SELECT * FROM entries WHERE id IN"
                " (SELECT rowid FROM entries_fts WHERE entries_fts MATCH ?)"
                " ORDER BY created_at DESC, id DESC LIMIT ?",
                (_fts_query(query), limit),
            )
        return [_entry(r) for r in rows]

    def get(self, entry_id: int) -> Entry | None:
        if not 1 <= entry_id <= MAX_ID:  # no such entry, and SQLite cannot take the number
            return None
        rows = self._query("SELECT * FROM entries WHERE id = ?", (entry_id,))
        return _entry(rows[0]) if rows else None

    def count(self) -> int:
        rows = self._query("SELECT count(*) AS n FROM entries")
        return int(rows[0]["n"]) if rows else 0

    # ---- removing ------------------------------------------------------------------------

    def delete(self, entry_id: int) -> None:
        if not 1 <= entry_id <= MAX_ID:
            return
        with self._lock:
            self._exec("DELETE FROM entries WHERE id = ?", (entry_id,))
            self._purge()

    def clear(self) -> None:
        with self._lock:
            self._exec("DELETE FROM entries")
            self._purge()

    def _purge(self) -> None:
        """Make deleted text unreadable in the files, not just unlisted: secure_delete zeroes
        freed pages, merging the search index drops the deleted words, and the checkpoint
        empties the WAL (best effort: a reader in another process can hold it)."""
        self._exec("INSERT INTO entries_fts (entries_fts) VALUES ('optimize')")
        self._exec("PRAGMA wal_checkpoint(TRUNCATE)")

    # ---- export and import ---------------------------------------------------------------

    def entries(self, ids: Sequence[int] | None = None) -> list[Entry]:
        """The given entries in that order (a missing id is an error), or all, oldest first."""
        if ids is None:
            return [_entry(r) for r in self._query("SELECT * FROM entries ORDER BY created_at, id")]
        found = []
        for i in ids:
            e = self.get(i)
            if e is None:
                raise DollyError(f"There is no history entry {i}.")
            found.append(e)
        return found

    def export_jsonl(self, out: TextIO, ids: Sequence[int] | None = None) -> int:
        entries = self.entries(ids)
        for e in entries:
            out.write(json.dumps(e.to_dict(), ensure_ascii=False) + "\n")
        return len(entries)

    def export_markdown(self, out: TextIO, ids: Sequence[int] | None = None) -> int:
        entries = self.entries(ids)
        out.write("# Dolly Desktop history\n")
        for e in entries:
            out.write("\n" + e.to_markdown())
        return len(entries)

    def import_jsonl(self, src: TextIO) -> int:
        """Add the entries of a JSON Lines export; returns how many were new. All or nothing.

        An entry already here (same start time and instruction) is skipped, so importing a
        file twice adds nothing; ids are kept where free."""
        if self._db is None:
            raise DollyError("History is turned off, so nothing can be imported.")
        lines, total = [], 0  # read first, within bounds (/dev/zero has no end, no newline)
        for n, line in enumerate(iter(lambda: _read_line(src), ""), 1):
            lines.append(line)
            total += len(line)
            if total > IMPORT_MAX_CHARS:
                raise DollyError(
                    f"This is more than {IMPORT_MAX_CHARS // 2**20} MiB: not a history export."
                )
            if len(line) > IMPORT_MAX_LINE:
                raise DollyError(
                    f"Line {n} is longer than {IMPORT_MAX_LINE // 2**20} MiB: "
                    "not a Dolly Desktop history entry."
                )
        entries = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entries.append(Entry.from_dict(json.loads(line)))
            except (ValueError, KeyError, TypeError, DollyError) as e:
                raise DollyError(f"Line {n} is not a Dolly Desktop history entry ({e}).") from e
        added = 0
        with self._lock, self._transaction():
            for e in entries:
                if self._query(
                    "SELECT 1 FROM entries WHERE created_at = ? AND instruction = ?",
                    (_iso(e.created_at), e.instruction),
                ):
                    continue
                free = not self._query("SELECT 1 FROM entries WHERE id = ?", (e.id,))
                self._insert({"id": e.id if free else None, **_columns(e)})
                added += 1
        return added

    # ---- sqlite plumbing -----------------------------------------------------------------

    def _exec(
        self, sql: str, args: Sequence[Any] = (), wait: float | None = None
    ) -> sqlite3.Cursor | None:
        """`wait`: seconds to wait for another process's lock (None: self.wait_s; 0 for a
        run's saves). A busy failure of the person's own request becomes HistoryBusy."""
        with self._lock:
            if self._db is None:
                return None
            self._set_wait(self.wait_s if wait is None else wait)
            try:
                return self._db.execute(sql, args)
            except sqlite3.OperationalError as e:
                if wait is None and _is_busy(e):
                    raise HistoryBusy(BUSY_SENTENCE) from e
                raise

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            cur = self._exec(sql, args)
            try:
                return [] if cur is None else cur.fetchall()
            except sqlite3.OperationalError as e:
                if _is_busy(e):
                    raise HistoryBusy(BUSY_SENTENCE) from e
                raise

    def _set_wait(self, seconds: float) -> None:
        ms = max(0, int(seconds * 1000))
        if ms != self._wait_ms:
            self._db.execute(f"PRAGMA busy_timeout = {ms}")  # type: ignore[union-attr]
            self._wait_ms = ms

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        # IMMEDIATE takes the write lock up front, waiting on busy_timeout; a deferred one
        # could fail at once when another process committed in between.
        self._exec("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._exec("ROLLBACK")
            raise
        self._exec("COMMIT")


BUSY_SENTENCE = (
    "The history is locked by another program (another Dolly Desktop, a backup tool): "
    "try again in a moment."
)


class _NewerSchema(Exception):
    """The file's user_version is above SCHEMA_VERSION (the message is that version)."""


def _connect(target: str, read_only: bool = False) -> sqlite3.Connection:
    uri = read_only
    if read_only:
        target = f"{Path(target).resolve().as_uri()}?mode=ro"
    # isolation_level=None: no hidden transactions; writes are single statements or explicit.
    conn = sqlite3.connect(
        target, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False, uri=uri
    )
    conn.row_factory = sqlite3.Row
    return conn


def _open_file(path: Path) -> sqlite3.Connection:
    if path.exists():
        # Read-only first: a file that is set aside must stay byte for byte as it was (a
        # read-write connection could switch its journal mode or checkpoint its WAL).
        probe = _connect(str(path), read_only=True)
        try:
            _check_version(probe)
            row = probe.execute("PRAGMA quick_check").fetchone()
            if row[0] != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed: {row[0]}")
        finally:
            probe.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = _connect(str(path))
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA secure_delete = ON")  # deleted text is overwritten, not left
        _migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _open_file_waiting(path: Path) -> sqlite3.Connection:
    """`_open_file`, trying again while another process holds the lock. Some steps of opening
    (the read-only probe, switching to WAL while another process creates the file) report
    "database is locked" at once instead of waiting on the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            return _open_file(path)
        except sqlite3.OperationalError as e:
            if not _is_busy(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _is_busy(e: sqlite3.Error) -> bool:
    code = getattr(e, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(e) or "busy" in str(e)


def _check_version(conn: sqlite3.Connection) -> int:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise _NewerSchema(version)
    return version


def _migrate(conn: sqlite3.Connection) -> None:
    if _check_version(conn) == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = _check_version(conn)  # again under the lock: another process may have won
        for step in MIGRATIONS[version:]:
            for sql in step:
                conn.execute(sql)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _is_read_only(e: sqlite3.Error) -> bool:
    code = getattr(e, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code & 0xFF == sqlite3.SQLITE_READONLY
    return "readonly" in str(e) or "read-only" in str(e)


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _is_corrupt(e: sqlite3.DatabaseError) -> bool:
    code = getattr(e, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None and code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return True
    text = str(e)
    return "not a database" in text or "malformed" in text


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _unused_name(path: Path, tag: str) -> Path:
    aside = path.with_name(f"{path.name}.{tag}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.{tag}-{n}")
    return aside


def _writer_alive(owner: str | None) -> bool:
    pid_text, _, token = (owner or "").partition(":")
    if not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return token in _LIVE_RUNS
    return _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill would terminate the process on Windows
        import ctypes

        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        ok = kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        kernel32.CloseHandle(handle)
        return bool(ok) and code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _entry(row: sqlite3.Row) -> Entry:
    status = row["status"]
    finished = row["finished_at"]
    if status == "running" and not _writer_alive(row["owner"]):
        status, finished = "interrupted", row["updated_at"]
    return Entry(
        id=row["id"],
        created_at=_parse_time(row["created_at"]),
        finished_at=_parse_time(finished) if finished else None,
        instruction=row["instruction"],
        context=row["context"],
        response=row["response"],
        params=GenerationParams.from_dict(json.loads(row["params"])),
        model=ModelRef(row["model_name"], row["model_precision"], row["model_folder"]),
        device=row["device"],
        input_tokens=row["input_tokens"],
        generated_tokens=row["generated_tokens"],
        ttft_s=row["ttft_s"],
        tokens_per_s=row["tokens_per_s"],
        stop_reason=status,
        error=row["error"],
        sources=tuple(json.loads(row["sources"] or "[]")),
    )


def _columns(e: Entry) -> dict[str, Any]:
    """An entry as table columns (for import; a finished run has no owner)."""
    return dict(
        created_at=_iso(e.created_at),
        updated_at=_iso(e.finished_at or e.created_at),
        finished_at=_iso(e.finished_at) if e.finished_at else None,
        instruction=e.instruction,
        context=e.context,
        response=e.response,
        params=json.dumps(e.params.to_dict()),
        model_name=e.model.name,
        model_precision=e.model.precision,
        model_folder=e.model.folder,
        device=e.device,
        input_tokens=e.input_tokens,
        generated_tokens=e.generated_tokens,
        ttft_s=e.ttft_s,
        tokens_per_s=e.tokens_per_s,
        status=e.stop_reason,
        error=e.error,
        sources=json.dumps(list(e.sources), ensure_ascii=False),
    )


def _source_line(n: int, s: dict[str, Any]) -> str:
    """A source as Markdown: 'n. file, page p, section “h”: “its text”'."""
    where = str(s.get("rel") or s.get("file") or "")
    if s.get("page") is not None:
        where += f", page {s['page']}"
    if s.get("heading"):
        where += f", section “{s['heading']}”"
    text = " ".join(str(s.get("text", "")).split())
    return f"{n}. {where}: “{text}”"


def _read_line(src: TextIO) -> str:
    try:
        return src.readline(IMPORT_MAX_LINE + 1)
    except UnicodeDecodeError as e:
        raise DollyError("This is not UTF-8 text: not a history export.") from e


def _fts_query(text: str) -> str:
    """Each word as a quoted prefix term, so quotes, dashes or AND in the text are not syntax."""
    return " ".join('"' + word.replace('"', '""') + '"*' for word in text.split())


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _parse_time(text: str) -> datetime:
    t = datetime.fromisoformat(text)
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)
