"""The history panel: every run, newest first, searchable; restore, re-run, delete, export.

Everything here runs on the GUI thread, so nothing waits long for the history's lock: a read
that another program blocks gives up after History.wait_s, says so in the panel and is tried
again a moment later; a change (delete, clear) says so and is not made.
"""

from __future__ import annotations

import io
from pathlib import Path

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QMessageBox,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from dolly_desktop.history.store import Entry, History, HistoryBusy

RETRY_MS = 1000  # a refresh the lock blocked is tried again after this long
STATUS_MARK = {"interrupted": " ⚠", "error": " ✗", "cancelled": " ■", "running": " …"}


class HistoryPanel(QWidget):
    selected = Signal(object)  # Entry
    rerun = Signal(object)  # Entry
    enabled_changed = Signal(bool)

    def __init__(self, history: History) -> None:
        super().__init__()
        self.history = history
        self.search = QLineEdit(objectName="history_search", placeholderText="Search history…")
        self.search.setClearButtonEnabled(True)
        self.list = QListWidget(objectName="history_list")
        self.list.setWordWrap(True)
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.rerun_button = QPushButton("Re-run")
        self.delete_button = QPushButton("Delete")
        self.export_button = QToolButton(text="Export", objectName="history_export")
        self.export_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        menu = QMenu(self)
        for label, fmt, only_one in [
            ("This entry as Markdown…", "md", True),
            ("This entry as JSON Lines…", "jsonl", True),
            ("All as Markdown…", "md", False),
            ("All as JSON Lines…", "jsonl", False),
        ]:
            menu.addAction(label, lambda f=fmt, o=only_one: self.export(f, o))
        self.export_button.setMenu(menu)
        self.clear_button = QPushButton("Clear all")
        self.keep = QCheckBox("Keep history", objectName="history_keep")
        self.keep.setChecked(history.enabled)
        self.busy_label = QLabel(objectName="history_busy", wordWrap=True)
        self.busy_label.hide()
        self._retry = QTimer(self, singleShot=True, interval=RETRY_MS)
        self._retry.timeout.connect(self.refresh)
        row = QHBoxLayout()
        for b in (self.rerun_button, self.delete_button, self.export_button):
            row.addWidget(b)
        row.addStretch(1)
        row2 = QHBoxLayout()
        row2.addWidget(self.keep)
        row2.addStretch(1)
        row2.addWidget(self.clear_button)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(self.search)
        lay.addWidget(self.busy_label)
        lay.addWidget(self.list, 1)
        lay.addLayout(row)
        lay.addLayout(row2)
        self._debounce = QTimer(self, singleShot=True, interval=200)
        self._debounce.timeout.connect(self.refresh)
        self.search.textChanged.connect(lambda _t: self._debounce.start())
        self.list.currentItemChanged.connect(self._on_current)
        self.rerun_button.clicked.connect(self._on_rerun)
        self.delete_button.clicked.connect(self.delete_current)
        self.clear_button.clicked.connect(self.clear_all)
        self.keep.toggled.connect(self.enabled_changed)
        self.refresh()

    def set_history(self, history: History) -> None:
        self.history = history
        self.refresh()

    def refresh(self) -> None:
        try:
            entries = self.history.list(query=self.search.text() or None)
        except HistoryBusy as e:  # what is shown stays; tried again in a moment
            self._busy(str(e))
            self._retry.start()
            return
        self._busy(None)
        current_id = self._current_id()
        self.list.blockSignals(True)
        self.list.clear()
        for e in entries:
            first = e.instruction.strip().splitlines()[0] if e.instruction.strip() else "(empty)"
            when = e.created_at.astimezone().strftime("%d %b %H:%M")
            item = QListWidgetItem(f"{first[:80]}{STATUS_MARK.get(e.stop_reason, '')}\n{when}")
            item.setData(Qt.ItemDataRole.UserRole, e.id)
            item.setToolTip(f"{e.model.name} {e.model.precision} · {e.device} · {e.stop_reason}")
            self.list.addItem(item)
            if e.id == current_id:
                self.list.setCurrentItem(item)
        self.list.blockSignals(False)
        self._sync_buttons()

    def _busy(self, sentence: str | None) -> None:
        """Say in the panel that the history is locked (None: it is not any more)."""
        self.busy_label.setText(sentence or "")
        self.busy_label.setVisible(sentence is not None)

    def _current_id(self) -> int | None:
        item = self.list.currentItem()
        return item.data(Qt.ItemDataRole.UserRole) if item else None

    def current_entry(self) -> Entry | None:
        entry_id = self._current_id()
        if entry_id is None:
            return None
        try:
            return self.history.get(entry_id)
        except HistoryBusy as e:
            self._busy(str(e))
            return None

    def _sync_buttons(self) -> None:
        has = self.list.currentItem() is not None
        self.rerun_button.setEnabled(has)
        self.delete_button.setEnabled(has)
        self.clear_button.setEnabled(self.list.count() > 0)

    def _on_current(self, *_args) -> None:
        self._sync_buttons()
        entry = self.current_entry()
        if entry is not None:
            self.selected.emit(entry)

    def _on_rerun(self) -> None:
        entry = self.current_entry()
        if entry is not None:
            self.rerun.emit(entry)

    def delete_current(self, confirm: bool = True) -> None:
        entry = self.current_entry()
        if entry is None:
            return
        if confirm and not self._ask(f"Delete “{entry.instruction[:60]}” from the history?"):
            return
        try:
            self.history.delete(entry.id)
        except HistoryBusy as e:
            self._busy(str(e))
            return
        self.refresh()

    def clear_all(self, confirm: bool = True) -> None:
        if confirm and not self._ask("Delete every entry in the history? This cannot be undone."):
            return
        try:
            self.history.clear()
        except HistoryBusy as e:
            self._busy(str(e))
            return
        self.refresh()

    def export(self, fmt: str, only_current: bool, path: str | None = None) -> int:
        entry = self.current_entry()
        if only_current and entry is None:
            return 0
        if path is None:
            suffix = "Markdown (*.md)" if fmt == "md" else "JSON Lines (*.jsonl)"
            path, _ = QFileDialog.getSaveFileName(
                self, "Export history", str(Path.home() / f"dolly-history.{fmt}"), suffix
            )
            if not path:
                return 0
        ids = [entry.id] if only_current and entry else None
        text = io.StringIO()  # read all first: a locked history leaves no empty file behind
        write = self.history.export_markdown if fmt == "md" else self.history.export_jsonl
        try:
            n = write(text, ids)
        except HistoryBusy as e:
            self._busy(str(e))
            return 0
        with open(path, "w", encoding="utf-8") as out:
            out.write(text.getvalue())
        return n

    def _ask(self, question: str) -> bool:
        answer = QMessageBox.question(self, "History", question)
        return answer == QMessageBox.StandardButton.Yes
