"""The history panel: every run, newest first, searchable; restore, re-run, delete, export.

Each run is a card (painted by CardDelegate, fast for hundreds of entries): the instruction on
one line, elided; when it ran, with which model and precision; badges for a passage, documents
used, a stopped, failed or interrupted run; a line between cards.

Everything here runs on the GUI thread, so nothing waits long for the history's lock: a read
that another program blocks gives up after History.wait_s, says so in the panel and is tried
again a moment later; a change (delete, clear) says so and is not made.
"""

from __future__ import annotations

import io
from pathlib import Path

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QRect, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QFont, QFontMetrics, QPainter, QPalette
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
    QStackedWidget,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QVBoxLayout,
    QWidget,
)

from dolly_desktop.history.store import Entry, History, HistoryBusy
from dolly_desktop.ui.look import style_message

RETRY_MS = 1000  # a refresh the lock blocked is tried again after this long
NOTICE_MS = 10_000  # an export's confirmation stays this long

TITLE_ROLE = Qt.ItemDataRole.UserRole + 1  # the instruction on one line (elided when painted)
META_ROLE = Qt.ItemDataRole.UserRole + 2  # "02 Dec 07:09 · dolly-v2-3b INT4"
BADGES_ROLE = Qt.ItemDataRole.UserRole + 3  # [(text, kind)], kind a key of BADGE_COLORS

# Badge hues, drawn as a light tint of the colour with a border of it: readable in either scheme.
BADGE_COLORS = {
    "passage": QColor(52, 120, 246),
    "documents": QColor(0, 150, 136),
    "stopped": QColor(230, 140, 0),
    "interrupted": QColor(230, 140, 0),
    "failed": QColor(211, 47, 47),
    "running": QColor(120, 120, 120),
}
STATUS_BADGE = {
    "cancelled": ("Stopped", "stopped", "Stopped: you stopped this run before it finished."),
    "error": ("Failed", "failed", "Failed: the run ended with an error."),
    "interrupted": (
        "Interrupted",
        "interrupted",
        "Interrupted: the app closed or crashed while this run was going.",
    ),
    "running": ("Running…", "running", "Running: this run is still going."),
}


def one_line(text: str) -> str:
    """The instruction as one line: every run of whitespace (newlines too) as one space."""
    return " ".join(text.split()) or "(empty)"


def badges(e: Entry) -> list[tuple[str, str, str]]:
    """The entry's badges: (text, kind, what it means)."""
    out = []
    if e.context:
        out.append(("Passage", "passage", "Passage: Dolly answered from a passage you gave."))
    if e.sources:
        files = {str(s.get("rel") or s.get("file") or "") for s in e.sources}
        n = len(files)
        text = f"{n} document" + ("s" if n != 1 else "")
        out.append((text, "documents", f"Documents: answered from {', '.join(sorted(files))}."))
    if e.stop_reason in STATUS_BADGE:
        out.append(STATUS_BADGE[e.stop_reason])
    return out


def meta_line(e: Entry) -> str:
    when = e.created_at.astimezone().strftime("%d %b %H:%M")
    return f"{when} · {e.model.name} {e.model.precision}".strip()


class CardDelegate(QStyledItemDelegate):
    """Paints an item as a card: the title, elided, in bold; below it the time, model and
    precision, then the badges; a separator line at its foot. Every card is the same height."""

    PAD = 6  # pixels around the text
    GAP = 4  # between the lines, and between badges

    @staticmethod
    def fonts(option: QStyleOptionViewItem) -> tuple[QFont, QFont]:
        title = QFont(option.font)
        title.setBold(True)
        small = QFont(option.font)
        small.setPointSizeF(max(4.0, option.font.pointSizeF() * 0.85))
        return title, small

    def sizeHint(self, option: QStyleOptionViewItem, index: QModelIndex) -> QSize:
        title, small = self.fonts(option)
        height = QFontMetrics(title).height() + QFontMetrics(small).height() + 4
        return QSize(200, 2 * self.PAD + self.GAP + height)

    def elided_title(
        self, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex
    ) -> str:
        """The title as painted in `option.rect`: one line, elided at its end."""
        width = option.rect.width() - 2 * self.PAD
        return QFontMetrics(self.fonts(option)[0]).elidedText(
            str(index.data(TITLE_ROLE) or ""), Qt.TextElideMode.ElideRight, width
        )

    def paint(
        self,
        painter: QPainter,
        option: QStyleOptionViewItem,
        index: QModelIndex | QPersistentModelIndex,
    ) -> None:
        painter.save()
        pal = option.palette
        r = option.rect
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        if selected:
            painter.fillRect(r, pal.color(QPalette.ColorRole.Highlight))
        elif option.state & QStyle.StateFlag.State_MouseOver:
            painter.fillRect(r, pal.color(QPalette.ColorRole.AlternateBase))
        text_role = QPalette.ColorRole.HighlightedText if selected else QPalette.ColorRole.Text
        title_font, small = self.fonts(option)
        tm, sm = QFontMetrics(title_font), QFontMetrics(small)
        x, width = r.left() + self.PAD, r.width() - 2 * self.PAD
        y = r.top() + self.PAD
        painter.setFont(title_font)
        painter.setPen(pal.color(text_role))
        painter.drawText(
            QRect(x, y, width, tm.height()),
            Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
            self.elided_title(option, index),
        )
        y += tm.height() + self.GAP
        line_h = sm.height() + 4
        painter.setFont(small)
        items = index.data(BADGES_ROLE) or []
        badge_w = [sm.horizontalAdvance(text) + 10 for text, _kind in items]
        room = max(0, width - sum(badge_w) - self.GAP * len(items))
        meta = sm.elidedText(str(index.data(META_ROLE) or ""), Qt.TextElideMode.ElideRight, room)
        if not selected:
            painter.setPen(pal.color(QPalette.ColorRole.PlaceholderText))
        painter.drawText(
            QRect(x, y, room, line_h),
            Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
            meta,
        )
        bx = x + sm.horizontalAdvance(meta) + self.GAP * 2
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        for (text, kind), w in zip(items, badge_w, strict=True):
            if bx + w > r.right() - self.PAD + 1:
                break
            color = BADGE_COLORS.get(kind, BADGE_COLORS["running"])
            fill = QColor(color)
            fill.setAlpha(50)
            box = QRect(bx, y, w, line_h)
            painter.setPen(color)
            if selected:  # a tint of the badge would vanish on the highlight
                painter.setBrush(pal.color(QPalette.ColorRole.Base))
                painter.drawRoundedRect(box.adjusted(0, 0, -1, -1), 4, 4)
            painter.setBrush(fill)
            painter.drawRoundedRect(box.adjusted(0, 0, -1, -1), 4, 4)
            painter.setPen(pal.color(QPalette.ColorRole.Text))
            painter.drawText(box, Qt.AlignmentFlag.AlignCenter, text)
            bx += w + self.GAP
        painter.setPen(pal.color(QPalette.ColorRole.Mid))
        painter.drawLine(r.left(), r.bottom(), r.right(), r.bottom())
        painter.restore()


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
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.setUniformItemSizes(True)  # every card is one height: fast for many entries
        self.list.setMouseTracking(True)
        self.delegate = CardDelegate(self.list)
        self.list.setItemDelegate(self.delegate)
        self.empty_label = QLabel(objectName="history_empty", wordWrap=True)
        self.empty_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty_label.setContentsMargins(12, 12, 12, 12)
        self.list_stack = QStackedWidget()
        self.list_stack.addWidget(self.list)
        self.list_stack.addWidget(self.empty_label)
        self.rerun_button = QPushButton("Re-run")
        self.delete_button = QPushButton("Delete")
        # A push button with a menu: room for its arrow beside the text (a tool button drew
        # it over the "t" and stood shorter than Re-run and Delete).
        self.export_button = QPushButton("Export", objectName="history_export")
        menu = QMenu(self)
        self.entry_export_actions = []  # "This entry…": only with an entry selected
        for label, fmt, only_one in [
            ("This entry as Markdown…", "md", True),
            ("This entry as JSON Lines…", "jsonl", True),
            ("All as Markdown…", "md", False),
            ("All as JSON Lines…", "jsonl", False),
        ]:
            action = menu.addAction(label, lambda f=fmt, o=only_one: self.export(f, o))
            if only_one:
                self.entry_export_actions.append(action)
        self.export_button.setMenu(menu)
        self.clear_button = QPushButton("Clear all")
        self.keep = QCheckBox("Keep history", objectName="history_keep")
        self.keep.setChecked(history.enabled)
        self.busy_label = QLabel(objectName="history_busy", wordWrap=True)
        self.busy_label.hide()
        self.done_label = QLabel(objectName="history_done", wordWrap=True)
        self.done_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.done_label.hide()
        self._done_timer = QTimer(self, singleShot=True, interval=NOTICE_MS)
        self._done_timer.timeout.connect(self.done_label.hide)
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
        lay.addWidget(self.list_stack, 1)
        lay.addLayout(row)
        lay.addWidget(self.done_label)
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
            title, meta, marks = one_line(e.instruction), meta_line(e), badges(e)
            # The display text is what a screen reader says; the delegate paints the card.
            spoken = " · ".join([title, meta, *(text for text, _k, _h in marks)])
            item = QListWidgetItem(spoken)
            item.setData(Qt.ItemDataRole.UserRole, e.id)
            item.setData(TITLE_ROLE, title)
            item.setData(META_ROLE, meta)
            item.setData(BADGES_ROLE, [(text, kind) for text, kind, _h in marks])
            tip = [e.instruction.strip()[:500], f"{meta} · {e.device}"]
            tip += [meaning for _t, _k, meaning in marks]
            if e.error:
                tip.append(e.error)
            item.setToolTip("\n".join(tip))
            self.list.addItem(item)
            if e.id == current_id:
                self.list.setCurrentItem(item)
        self.list.blockSignals(False)
        self._show_empty(self.search.text().strip())
        self._sync_buttons()

    def _show_empty(self, query: str) -> None:
        """A sentence instead of an empty list: nothing matched, or nothing was run yet."""
        if self.list.count():
            self.list_stack.setCurrentWidget(self.list)
            return
        if query:
            text = f"No runs match '{query}'"
        elif not self.history.enabled:
            text = "History is off: runs are not kept."
        else:
            text = "No runs yet. Each run you make appears here."
        self.empty_label.setText(text)
        self.list_stack.setCurrentWidget(self.empty_label)

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
        for action in self.entry_export_actions:
            action.setEnabled(has)
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
        try:
            with open(path, "w", encoding="utf-8") as out:
                out.write(text.getvalue())
        except OSError as e:
            self._done(f"Could not save {path}: {e.strerror or e}", error=True)
            return 0
        self._done(f"Exported {n} {'entry' if n == 1 else 'entries'} to {path}", error=False)
        return n

    def _done(self, sentence: str, error: bool) -> None:
        """Say how an export went, in the panel, for NOTICE_MS."""
        style_message(self.done_label, error)
        self.done_label.setText(sentence)
        self.done_label.show()
        self._done_timer.start()

    def _ask(self, question: str) -> bool:
        answer = QMessageBox.question(self, "History", question)
        return answer == QMessageBox.StandardButton.Yes
