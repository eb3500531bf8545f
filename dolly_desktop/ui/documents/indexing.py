"""Indexing a collection from the window: the work (on a Job's thread: the model's tokenizer
counts the chunks, documents.index does the rest, one commit per file) and the row that shows
it: files, MB, rate and skipped files with their reasons, with Cancel. A cancelled index keeps
every file it finished: the collection can be searched at once, and the next run carries on."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from dolly_desktop.documents.chunk import TokenCounter
from dolly_desktop.documents.index import DocIndex, IndexReport, Progress
from dolly_desktop.errors import DollyError
from dolly_desktop.models.capacity import format_bytes
from dolly_desktop.models.store import Store

TOKENIZER_FILE = "tokenizer.json"
STEP_EVERY_S = 0.1  # progress reaches the window at most this often: a file can take 50 µs
SKIPPED_ROWS = 5  # the skipped list's height, in rows


def find_tokenizer(model_folder: str | None) -> Path:
    """The loaded model's tokenizer.json, else any installed model's (all Dollys share one)."""
    folders = [Path(model_folder)] if model_folder else []
    folders += [m.path for m in Store().list() if m.runnable]
    for f in folders:
        if (f / TOKENIZER_FILE).is_file():
            return f / TOKENIZER_FILE
    raise DollyError(
        "Load or install a model first: its tokenizer counts the chunks of your documents."
    )


def size(n: float) -> str:
    """format_bytes that never wraps between the number and its unit."""
    return format_bytes(n).replace(" ", "\u00a0")


def step_text(p: Progress, seconds: float) -> str:
    """'120 of 400 files · 3.1 MB of 9.8 MB · 2.4 MB/s · 2 skipped'."""
    rate = p.bytes_done / seconds if seconds > 0 else 0.0
    return (
        f"{p.files_done} of {p.files_total} files · {size(p.bytes_done)} of "
        f"{size(p.bytes_total)} · {size(rate)}/s · {p.skipped} skipped"
    )


def index_collection(
    name: str,
    model_folder: str | None,
    progress: Callable[[str, float], None],
    cancel: threading.Event,
    index_path: str | None = None,
) -> IndexReport:
    """Bring collection `name`'s index up to date. Runs on a Job's thread with its own
    connection."""
    progress("Loading the tokenizer…", 0.0)
    counter = TokenCounter(find_tokenizer(model_folder))
    with DocIndex(index_path) as ix:
        t0 = time.monotonic()
        last = 0.0
        progress("Looking for files…", 0.0)

        def on_step(p: Progress) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last >= STEP_EVERY_S or p.files_done == p.files_total:
                last = now
                fraction = p.bytes_done / p.bytes_total if p.bytes_total else 0.0
                progress(step_text(p, now - t0), fraction)

        return ix.index(name, counter, progress=on_step, cancel=cancel)


def report_text(name: str, r: IndexReport) -> str:
    """One line for a finished run: what changed, how much was read, how fast."""
    rate = r.bytes_read / r.seconds if r.seconds > 0 else 0.0
    n = r.added + r.changed
    parts = [f"{name}: {n} file{'s' if n != 1 else ''} indexed ({r.chunks_added} chunks)"]
    others = ((r.unchanged, "unchanged"), (r.renamed, "moved"), (r.removed, "removed"))
    parts += [f"{n} {what}" for n, what in others if n]
    text = ", ".join(parts)
    return text + f"; {size(r.bytes_read)} in {r.seconds:.1f}\u00a0s, {size(rate)}/s"


class IndexRow(QWidget):
    """Progress of the index being built, with Cancel; afterwards its summary and what was
    skipped, each file with its reason."""

    cancel_requested = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.label = QLabel(objectName="index_progress", wordWrap=True)
        self.label.setAccessibleName("Indexing progress")
        self.bar = QProgressBar(maximumHeight=12, textVisible=False)
        self.bar.setRange(0, 1000)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setAccessibleName("Cancel indexing")
        self.cancel_button.setToolTip("Stop indexing: the files done so far stay searchable")
        self.skipped_button = QPushButton(objectName="skipped_toggle", checkable=True)
        self.skipped_list = QListWidget(objectName="skipped")
        self.skipped_list.setAccessibleName("Skipped files and why")
        self.skipped_list.hide()
        top = QHBoxLayout()
        top.setContentsMargins(0, 0, 0, 0)
        top.addWidget(self.bar, 1)
        top.addWidget(self.cancel_button)
        below = QHBoxLayout()
        below.setContentsMargins(0, 0, 0, 0)
        below.addWidget(self.label, 1)
        below.addWidget(self.skipped_button, 0, Qt.AlignmentFlag.AlignTop)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(top)
        lay.addLayout(below)
        lay.addWidget(self.skipped_list)
        self.cancel_button.clicked.connect(self.cancel_requested.emit)
        self.skipped_button.toggled.connect(self.skipped_list.setVisible)
        self.hide()

    def start(self, text: str) -> None:
        self.bar.show()
        self.bar.setValue(0)
        self.cancel_button.show()
        self.cancel_button.setEnabled(True)
        self.show_skipped([])
        self.label.setText(text)
        self.show()

    def step(self, text: str, fraction: float) -> None:
        self.label.setText(text)
        self.bar.setValue(round(fraction * 1000))

    def cancelling(self) -> None:
        self.cancel_button.setEnabled(False)
        self.label.setText(self.label.text() + " · stopping after this file…")

    def finish(self, text: str, skipped: list[tuple[str, str]]) -> None:
        self.bar.hide()
        self.cancel_button.hide()
        self.label.setText(text)
        self.show_skipped(skipped)
        self.show()

    def show_skipped(self, skipped: list[tuple[str, str]]) -> None:
        self.skipped_list.clear()
        for path, reason in skipped:
            item = QListWidgetItem(f"{os.path.basename(path)}: {reason}")
            item.setToolTip(path)
            self.skipped_list.addItem(item)
        rows = min(SKIPPED_ROWS, max(1, len(skipped)))
        lst = self.skipped_list
        row_h = max(lst.sizeHintForRow(0), lst.fontMetrics().height() + 4)
        lst.setFixedHeight(row_h * rows + 6)
        self.skipped_button.setText(f"{len(skipped)} skipped…")
        self.skipped_button.setChecked(False)
        self.skipped_button.setVisible(bool(skipped))
        self.skipped_list.setTextElideMode(Qt.TextElideMode.ElideMiddle)
