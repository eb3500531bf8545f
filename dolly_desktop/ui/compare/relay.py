"""What the comparison's threads tell the window, kept until the window takes it.

run_comparison calls back on a pool thread, and the text callback may come on an
openvino-genai thread (DESIGN.md): nothing there touches Qt. Each call appends under a lock;
the window takes everything at once on a timer (at most once a frame), so a closed window
leaves nothing queued to a deleted object, and pieces of text arrive in one paint.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    kind: str  # "text", "stage" or "outcome"
    label: str
    value: Any  # the text, the stage ("loading", "generating", "agreement"), the Outcome


class Relay:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[Event] = []
        self.pieces: dict[str, int] = {}  # pieces of text heard per label: streamed, not whole

    def text(self, label: str, piece: str) -> None:
        with self._lock:
            self.pieces[label] = self.pieces.get(label, 0) + 1
            last = self._events[-1] if self._events else None
            if last is not None and last.kind == "text" and last.label == label:
                self._events[-1] = Event("text", label, last.value + piece)
            else:
                self._events.append(Event("text", label, piece))

    def stage(self, label: str, what: str) -> None:
        with self._lock:
            self._events.append(Event("stage", label, what))

    def outcome(self, outcome: Any) -> None:
        with self._lock:
            self._events.append(Event("outcome", outcome.label, outcome))

    def take(self) -> list[Event]:
        with self._lock:
            events, self._events = self._events, []
        return events
