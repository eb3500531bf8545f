"""Watching collections while the app runs: their folders are polled on an interval in a
background thread, and what changed is re-indexed and reported.

    watcher = Watcher(TokenCounter(tokenizer_json))
    watcher.start(["notes", "manuals"], on_change)   # on_change(name, IndexReport)
    ...
    watcher.stop()                                    # returns within about one interval

A poll walks the folders and compares each file's size and mtime with the last poll's (the
same stat check that makes an unchanged re-index cheap: no file is opened, nothing is
written); only a tree that differs is re-indexed (DocIndex.index: one commit per file, so a
stop midway keeps what was done). The first poll re-indexes every collection once, catching up
on what changed while the app was closed.

Polling rather than events: watchdog would be a new dependency (the lock stays as it is this
round), and QFileSystemWatcher does not recurse (a watch per folder, and documents/ has no
Qt). A poll of 10,000 files costs a walk and 10,000 stats, a fraction of a second.

`on_change` is called on the watcher's thread: a window hands it to its own thread (a Qt
signal). The watcher has its own database connection; give it a TokenCounter of its own.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from dolly_desktop.documents.chunk import TokenCounter
from dolly_desktop.documents.index import DocIndex, IndexReport, _walk
from dolly_desktop.errors import DollyError

log = logging.getLogger(__name__)

INTERVAL_S = 5.0  # between polls
CHECK_STOP_EVERY = 256  # files walked between looks at stop()

OnChange = Callable[[str, IndexReport], None]
# What a poll sees of a collection: its roots, and (path, size, mtime) or (path, reason) of
# each file found.
Snapshot = tuple[tuple[str, ...], tuple[tuple, ...]]


class Stopped(Exception):
    """stop() was called during a walk."""


class Watcher:
    """Polls collections' folders in a background thread and re-indexes what changed."""

    def __init__(
        self,
        counter: TokenCounter,
        index_path: str | Path | None = None,
        interval: float = INTERVAL_S,
    ) -> None:
        self.counter = counter
        self.index_path = index_path
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: dict[str, Snapshot] = {}
        self.rounds = 0  # polls of every watched collection done since start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, names: Sequence[str], on_change: OnChange) -> None:
        """Watch these collections (instead of any watched before): poll at once, then every
        `interval` seconds; `on_change(name, report)` after each re-index that changed
        something (files added, changed, moved or removed, or the skipped list)."""
        self.stop()
        self._stop = threading.Event()
        self._last = {}
        self.rounds = 0
        self._thread = threading.Thread(
            target=self._run,
            args=(list(names), on_change, self._stop),
            name="documents-watcher",
            daemon=True,  # an app quitting without stop() is not held open
        )
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop watching; returns once the thread has ended (a re-index in progress stops
        after its current file; `timeout` bounds the wait)."""
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
        if t is None or not t.is_alive():
            self._thread = None

    def _run(self, names: list[str], on_change: OnChange, stop: threading.Event) -> None:
        try:
            with DocIndex(self.index_path) as ix:
                while not stop.is_set():
                    for name in list(names):
                        if stop.is_set():
                            break
                        try:
                            self._poll(ix, name, on_change, stop)
                        except Stopped:
                            break
                        except DollyError as e:  # the collection was removed: stop watching it
                            log.info("not watching %s any more: %s", name, e)
                            names.remove(name)
                        except Exception:  # one bad poll never ends the watching
                            log.exception("watching %s failed; trying again", name)
                    else:
                        self.rounds += 1
                    stop.wait(self.interval)
        except Exception:
            log.exception("the documents watcher stopped")

    def _poll(self, ix: DocIndex, name: str, on_change: OnChange, stop: threading.Event) -> None:
        before = self._last.get(name)
        now = snapshot(ix.roots(name), stop)
        if now == before:
            return
        report = ix.index(name, self.counter, cancel=stop)
        if not report.cancelled:
            self._last[name] = now  # a cancelled one is looked at afresh next time
        if changed(report) or (before is not None and _skips(before) != _skips(now)):
            on_change(name, report)


def snapshot(roots: list[str], stop: threading.Event | None = None) -> Snapshot:
    """What a poll compares: every file under `roots` with its size and mtime (no file is
    opened), and each skipped one with its reason; the roots that are there."""
    present = tuple(r for r in roots if os.path.lexists(r))
    files: list[tuple] = []
    for i, (path, _rel, st, reason) in enumerate(_walk(present)):
        if stop is not None and i % CHECK_STOP_EVERY == 0 and stop.is_set():
            raise Stopped
        files.append((path, st.st_size, st.st_mtime_ns) if st is not None else (path, reason))
    return present, tuple(files)


def _skips(snap: Snapshot) -> set[tuple]:
    return {f for f in snap[1] if len(f) == 2}


def changed(report: IndexReport) -> bool:
    """Whether a re-index changed what can be found."""
    return bool(report.added or report.changed or report.renamed or report.removed)
