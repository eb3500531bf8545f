"""The Documents pane beside the Context pane: pick the collections Dolly answers from, make
one from a folder (or add a folder to one), keep their indexes up to date, and choose what
happens when nothing matches. Everything that reads or writes the index runs on a Job."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from dolly_desktop.documents.chunk import TokenCounter
from dolly_desktop.documents.index import CollectionInfo, DocIndex, IndexReport
from dolly_desktop.documents.watch import Watcher, changed
from dolly_desktop.models.capacity import format_bytes
from dolly_desktop.ui.background import Job
from dolly_desktop.ui.documents.indexing import (
    IndexRow,
    find_tokenizer,
    index_collection,
    report_text,
)

log = logging.getLogger(__name__)
LIST_ROWS = 4  # the collection list's height, in rows
TOGGLE_CHARS = 28  # the collapsed pane's line, at most
TOGGLE_TIP = (
    "Answer from your own files: the passages that best match the instruction go into the "
    "prompt, and the answer lists them"
)
EMPTY = "No collections yet: Add folder… makes one from your .txt, .md, .html and .pdf files."


def name_for(folder: str) -> str:
    """A collection name from a folder's name (documents.index.NAME_RE's characters)."""
    name = re.sub(r"[^\w .-]+", " ", Path(folder).name).strip(" .-")[:64]
    return name or "documents"


class DocumentsPane(QWidget):
    """Collapsed to one line ("Documents: manuals, notes") until opened."""

    changed = Signal()  # the picked collections changed
    notice = Signal(str)  # something went wrong: one sentence for the window
    listed = Signal()  # the collection list was read again
    index_over = Signal(str)  # a collection's indexing ended (done, cancelled or failed)
    updated = Signal(str)  # the watcher re-indexed a collection whose files changed
    _watched = Signal(str, object)  # from the watcher's thread: name, IndexReport

    def __init__(self, index_path: str | None = None) -> None:
        super().__init__()
        self.index_path = index_path
        self._model_folder: str | None = None  # whose tokenizer counts the chunks
        self._watcher: Watcher | None = None  # keeps the collections up to date while we run
        self._watching: list[str] = []
        self._counter: TokenCounter | None = None  # the watcher's own
        self._counter_job: Job | None = None
        self._held: set[str] = set()  # indexing cancelled: not watched until updated
        self._closing = False
        self.may_watch = True  # False: the index is only read and written when asked
        self.infos: dict[str, CollectionInfo] = {}
        self._wanted: set[str] = set()  # picks to keep across a new listing
        self._list_job: Job | None = None
        self.index_job: Job | None = None
        self.indexing = ""  # the collection being indexed
        self._pending: list[str] = []  # collections to index when this one ends

        self.toggle = QToolButton(objectName="documents_toggle", checkable=True)
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.toggle.setAccessibleName("Show the documents pane")
        self.list = QListWidget(objectName="collections")
        self.list.setAccessibleName("Collections to answer from")
        self.list.hide()
        self.empty = QLabel(EMPTY, wordWrap=True, objectName="no_collections")
        self.add_button = QPushButton("Add folder…")
        self.add_button.setToolTip("Make a collection from a folder, or add one to a collection")
        self.update_button = QPushButton("Update index")
        self.update_button.setToolTip("Read the selected collection's folders again")
        self.remove_button = QPushButton("Remove…")
        self.remove_button.setToolTip("Forget the selected collection (your files stay)")
        self.fallback = QCheckBox(
            "If nothing matches, answer without a passage", objectName="docs_fallback"
        )
        self.progress = IndexRow()
        self.body = QWidget()
        bv = QVBoxLayout(self.body)
        bv.setContentsMargins(0, 0, 0, 0)
        bv.addWidget(self.list)
        bv.addWidget(self.empty)
        row = QHBoxLayout()
        for b in (self.add_button, self.update_button, self.remove_button):
            row.addWidget(b)
        row.addStretch(1)
        bv.addLayout(row)
        bv.addWidget(self.fallback)
        bv.addWidget(self.progress)
        bv.addStretch(1)
        self.body.hide()
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.toggle, 0, Qt.AlignmentFlag.AlignLeft)
        lay.addWidget(self.body, 1)
        lay.addStretch(0)  # collapsed beside an open Context pane: stays at the top

        self.toggle.toggled.connect(self.set_open)
        self.list.itemChanged.connect(self._on_item_changed)
        self.list.currentItemChanged.connect(lambda *_: self._update_buttons())
        self.add_button.clicked.connect(self.choose_folder)
        self.update_button.clicked.connect(lambda: self.update_index(self.current()))
        self.remove_button.clicked.connect(lambda: self.remove(self.current()))
        self.progress.cancel_requested.connect(self.cancel_index)
        self._watched.connect(self._on_watched, Qt.ConnectionType.QueuedConnection)
        self._show_picks()
        self._update_buttons()

    @property
    def model_folder(self) -> str | None:
        return self._model_folder

    @model_folder.setter
    def model_folder(self, folder: str | None) -> None:
        self._model_folder = folder
        self.watch()  # a tokenizer to count with, maybe for the first time

    # ---- picks ------------------------------------------------------------------------
    def picked(self) -> list[str]:
        """The collections ticked, in the list's order."""
        items = (self.list.item(i) for i in range(self.list.count()))
        return [it.data(Qt.ItemDataRole.UserRole) for it in items
                if it.checkState() == Qt.CheckState.Checked]  # fmt: skip

    def set_picked(self, names: Iterable[str]) -> None:
        self._wanted = set(names)
        self.list.blockSignals(True)
        for i in range(self.list.count()):
            it = self.list.item(i)
            on = it.data(Qt.ItemDataRole.UserRole) in self._wanted
            it.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)
        self.list.blockSignals(False)
        self._show_picks()
        self.changed.emit()

    def current(self) -> str:
        it = self.list.currentItem()
        return it.data(Qt.ItemDataRole.UserRole) if it is not None else ""

    def _on_item_changed(self, item: QListWidgetItem) -> None:
        name = item.data(Qt.ItemDataRole.UserRole)
        if item.checkState() == Qt.CheckState.Checked:
            self._wanted.add(name)
        else:
            self._wanted.discard(name)
        self._show_picks()
        self.changed.emit()

    def _show_picks(self) -> None:
        names = self.picked()
        text = "Documents: " + ", ".join(names) if names else "Documents"
        if self.indexing:
            text += f" · indexing {self.indexing}…"
        # Elided: the token meter beside it keeps its room in a narrow window.
        width = self.toggle.fontMetrics().averageCharWidth() * TOGGLE_CHARS
        elided = self.toggle.fontMetrics().elidedText(text, Qt.TextElideMode.ElideRight, width)
        self.toggle.setText(elided)
        self.toggle.setToolTip(f"{text}\n\n{TOGGLE_TIP}")

    def set_open(self, open_: bool) -> None:
        self.toggle.setChecked(open_)
        self.toggle.setArrowType(Qt.ArrowType.DownArrow if open_ else Qt.ArrowType.RightArrow)
        self.body.setVisible(open_)

    # ---- the list ---------------------------------------------------------------------
    def refresh(self) -> Job:
        """Read the collections again (on a Job); `listed` says when they are shown."""
        path = self.index_path

        def work(_p: object, _c: threading.Event) -> dict[str, CollectionInfo]:
            with DocIndex(path) as ix:
                return {n: ix.info(n) for n in ix.names()}

        job = self._list_job = Job("list collections", work, owner=self)
        job.done.connect(lambda infos: job is self._list_job and self._show_list(infos))
        job.failed.connect(self.notice.emit)
        job.start()
        return job

    def _show_list(self, infos: dict[str, CollectionInfo]) -> None:
        self.infos = infos
        current = self.current()
        self.list.blockSignals(True)
        self.list.clear()
        for name, i in infos.items():
            size = f"{i.files} files · {format_bytes(i.bytes)}" if i.files else "not indexed yet"
            if name == self.indexing:
                size = f"indexing… {size}" if i.files else "indexing…"
            item = QListWidgetItem(f"{name}  —  {size}")
            item.setData(Qt.ItemDataRole.UserRole, name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            on = name in self._wanted
            item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)
            tip = "\n".join(i.roots) + f"\n{i.chunks} chunks, {i.skipped} files skipped"
            item.setToolTip(tip)
            self.list.addItem(item)
            if name == current:
                self.list.setCurrentItem(item)
        if self.list.currentItem() is None and self.list.count():
            self.list.setCurrentRow(0)
        rows = min(LIST_ROWS, max(2, self.list.count()))
        row_h = max(self.list.sizeHintForRow(0), self.list.fontMetrics().height() + 4)
        self.list.setFixedHeight(row_h * rows + 6)
        self.list.setVisible(bool(infos))
        self.empty.setVisible(not infos)
        self.list.blockSignals(False)
        self._show_picks()
        self._update_buttons()
        self.changed.emit()
        self.listed.emit()
        self.watch()

    def _update_buttons(self) -> None:
        has = bool(self.current())
        self.update_button.setEnabled(has and not self.indexing)
        self.remove_button.setEnabled(has and self.current() != self.indexing)

    # ---- making and indexing ----------------------------------------------------------
    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "A folder of documents", str(Path.home()))
        if not folder:
            return
        names = [name_for(folder)] + [n for n in self.infos if n != name_for(folder)]
        name, ok = QInputDialog.getItem(
            self, "Collection", f"Add {folder} to the collection:", names, 0, True
        )
        if ok and name.strip():
            self.add_folder(name.strip(), [folder])

    def add_folder(self, name: str, roots: list[str]) -> Job:
        """Make collection `name` from these folders and files (or add them to it), list it,
        tick it, and index it."""
        path = self.index_path

        def work(_p: object, _c: threading.Event) -> None:
            with DocIndex(path) as ix:
                ix.add(name, roots)

        job = Job(f"add to {name}", work, owner=self)
        job.done.connect(lambda _r: self._wanted.add(name))
        job.done.connect(lambda _r: self.update_index(name))
        job.done.connect(lambda _r: self.refresh())
        job.failed.connect(self.notice.emit)
        job.start()
        return job

    def update_index(self, name: str) -> None:
        """Index `name` now, or after the collection being indexed."""
        if not name:
            return
        self._held.discard(name)
        if self.index_job is not None:
            if name not in self._pending and name != self.indexing:
                self._pending.append(name)
            return
        folder, path = self.model_folder, self.index_path

        def work(progress, cancel: threading.Event) -> IndexReport:
            return index_collection(name, folder, progress, cancel, path)

        self._stop_watching()  # one writer per collection: the watcher waits for this run
        job = self.index_job = Job(f"index {name}", work, owner=self)
        self.indexing = name
        job.progress.connect(self.progress.step)
        job.done.connect(lambda r: self._index_done(name, r))
        job.cancelled.connect(lambda: self._index_cancelled(name))
        job.failed.connect(lambda message: self._index_failed(name, message))
        job.ended.connect(lambda: self._index_ended(name))
        self.progress.start(f"Indexing {name}…")
        self.set_open(True)
        self._show_picks()
        self._update_buttons()
        job.start()

    def cancel_index(self) -> None:
        if self.index_job is not None:
            self._pending.clear()
            self.index_job.cancel()
            self.progress.cancelling()

    def _index_done(self, name: str, report: IndexReport) -> None:
        self.progress.finish(report_text(name, report), report.skipped)

    def _index_cancelled(self, name: str) -> None:
        self._held.add(name)
        self.progress.finish(
            f"{name}: indexing cancelled. The files indexed so far are kept and can be "
            "searched; Update index carries on.",
            [],
        )

    def _index_failed(self, name: str, message: str) -> None:
        self.progress.finish(f"{name} could not be indexed: {message}", [])
        self.notice.emit(message)

    def _index_ended(self, name: str) -> None:
        self.index_job = None
        self.indexing = ""
        self.refresh()
        self._show_picks()
        self._update_buttons()
        self.index_over.emit(name)
        if self._pending:
            self.update_index(self._pending.pop(0))

    def remove(self, name: str, confirm: bool = True) -> None:
        if not name or name == self.indexing:
            return
        if confirm:
            answer = QMessageBox.question(
                self, "Remove a collection",
                f"Forget the collection {name} and its index? Your files are not touched.",
            )  # fmt: skip
            if answer != QMessageBox.StandardButton.Yes:
                return
        path = self.index_path

        def work(_p: object, _c: threading.Event) -> None:
            with DocIndex(path) as ix:
                ix.remove(name)

        job = Job(f"remove {name}", work, owner=self)
        job.failed.connect(self.notice.emit)
        job.ended.connect(self.refresh)
        self._wanted.discard(name)
        job.start()

    # ---- watching ---------------------------------------------------------------------
    def watch(self) -> None:
        """Re-index every collection whose files change while the app runs (documents.watch:
        polled on its own thread), except while this pane indexes one itself and one whose
        indexing was cancelled (until it is updated again: Cancel means stop)."""
        names = sorted(set(self.infos) - self._held)
        if self._closing or self.index_job is not None or not self.may_watch:
            return
        if self._watcher is not None and self._watching == names:
            return
        if self._counter is None:  # the tokenizer loads once, off the GUI thread
            if self._counter_job is None and names:
                folder = self._model_folder

                def work(_p: object, _c: threading.Event) -> TokenCounter:
                    return TokenCounter(find_tokenizer(folder))

                job = self._counter_job = Job("load the tokenizer", work, owner=self)
                job.done.connect(lambda c: setattr(self, "_counter", c))
                job.failed.connect(lambda m: log.info("collections not watched: %s", m))
                job.ended.connect(lambda: setattr(self, "_counter_job", None))
                job.ended.connect(lambda: self._counter is not None and self.watch())
                job.start()
            return
        self._stop_watching()
        if names:
            self._watcher, self._watching = Watcher(self._counter, self.index_path), names
            self._watcher.start(names, lambda name, report: self._watched.emit(name, report))

    def _stop_watching(self) -> None:
        watcher, self._watcher, self._watching = self._watcher, None, []
        if watcher is not None:
            watcher.stop(timeout=10)  # a re-index in progress stops after its current file

    def _on_watched(self, name: str, report: IndexReport) -> None:
        if changed(report):
            self.progress.finish(f"Updated from its folders: {report_text(name, report)}", [])
        self.refresh()
        self.updated.emit(name)

    def shut_down(self) -> None:
        """The window closes: stop indexing at the next file and wait for it."""
        self._closing = True
        self._stop_watching()
        self._pending.clear()
        job = self.index_job
        if job is not None:
            job.cancel()
            job.wait()
