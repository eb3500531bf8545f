"""The Context pane: an optional passage for Dolly to work from (its `Input:` format), pasted,
dropped as a text file or opened, with a live token meter saying whether the prompt fits."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from dolly_desktop.errors import DollyError
from dolly_desktop.generation.prompt import build_prompt, read_text_file
from dolly_desktop.ui.background import Job

METER_DELAY_MS = 300  # count once typing pauses, not on every key
OVER = "color: #b00020;"


class ContextEdit(QPlainTextEdit):
    """Plain text only; a dropped file is read as UTF-8 text (or refused in one sentence)."""

    file_dropped = Signal(str)

    def dragEnterEvent(self, e: QDragEnterEvent) -> None:
        if e.mimeData().hasUrls():
            e.acceptProposedAction()
        else:
            super().dragEnterEvent(e)

    def dropEvent(self, e: QDropEvent) -> None:
        urls = [u for u in e.mimeData().urls() if u.isLocalFile()]
        if urls:
            self.file_dropped.emit(urls[0].toLocalFile())
            e.acceptProposedAction()
        else:
            super().dropEvent(e)


class ContextPane(QWidget):
    """Collapsed by default. `fits` says whether the last count fitted the model's context;
    `changed` asks the window to recount."""

    changed = Signal()
    fit_changed = Signal(bool)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.toggle = QToolButton(objectName="context_toggle", checkable=True)
        self.toggle.setText("Context (optional)")
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.toggle.setAccessibleName("Show the context pane")
        self.toggle.setToolTip("A passage for Dolly to work from: a question about it, a "
                               "summary, facts to extract")  # fmt: skip
        self.edit = ContextEdit(objectName="context")
        self.edit.setPlaceholderText(
            "Paste or drop a passage (a .txt or .md file) for Dolly to answer from, summarize "
            "or extract facts from."
        )
        self.edit.setAccessibleName("Context")
        self.edit.setAccessibleDescription("A passage Dolly reads before your instruction")
        self.open_button = QPushButton("Open file…")
        self.open_button.setAccessibleName("Open a text file as the context")
        self.clear_button = QPushButton("Clear context")
        self.meter = QLabel(objectName="token_meter", wordWrap=True)
        self.meter.setAccessibleName("Prompt size")
        self.meter.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        # Takes the room left beside the toggle and wraps there: a long sentence (the prompt
        # does not fit…) never widens the window.
        policy = QSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        policy.setHeightForWidth(True)
        self.meter.setSizePolicy(policy)
        self.message = QLabel(objectName="context_message", wordWrap=True)
        self.message.setStyleSheet(OVER)
        self.body = QWidget()
        bv = QVBoxLayout(self.body)
        bv.setContentsMargins(0, 0, 0, 0)
        bv.addWidget(self.edit)
        row = QHBoxLayout()
        row.addWidget(self.open_button)
        row.addWidget(self.clear_button)
        row.addStretch(1)
        bv.addLayout(row)
        bv.addWidget(self.message)
        self.body.hide()
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        top = QHBoxLayout()
        top.addWidget(self.toggle)
        top.addWidget(self.meter, 1)
        lay.addLayout(top)
        lay.addWidget(self.body, 1)
        lay.addStretch(1)  # collapsed beside the open Documents pane: stays at the top
        self._lay = lay
        self.fits = True
        self.documents = False  # collections are picked: the meter says what room they have
        self._count_job: Job | None = None
        self._timer = QTimer(self, singleShot=True, interval=METER_DELAY_MS)
        self._timer.timeout.connect(self.changed.emit)
        self.toggle.toggled.connect(self.set_open)
        self.edit.textChanged.connect(self.schedule_count)
        self.edit.file_dropped.connect(self.load_file)
        self.open_button.clicked.connect(self.choose_file)
        self.clear_button.clicked.connect(self.edit.clear)

    def text(self) -> str:
        return self.edit.toPlainText()

    def set_text(self, text: str) -> None:
        self.edit.setPlainText(text)
        if text.strip():
            self.set_open(True)

    def set_open(self, open_: bool) -> None:
        self.toggle.setChecked(open_)
        self.toggle.setArrowType(Qt.ArrowType.DownArrow if open_ else Qt.ArrowType.RightArrow)
        self.body.setVisible(open_)
        self._lay.setStretch(2, 0 if open_ else 1)  # open: the passage takes the height

    def schedule_count(self) -> None:
        self._timer.start()

    def choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open a passage", str(Path.home()), "Text (*.txt *.md);;All files (*)"
        )
        if path:
            self.load_file(path)

    def load_file(self, path: str) -> None:
        try:
            text = read_text_file(path)
        except DollyError as e:
            self.message.setText(str(e))  # the context that was there stays as it was
            return
        self.message.setText("")
        self.set_text(text)

    def count(
        self,
        instruction: str,
        max_new: int,
        counter: Callable[[str], int] | None,
        context_length: int,
    ) -> None:
        """Count the prompt with the model's own tokenizer on a pool thread; show the result.
        Without a model, there is nothing to count with: the meter stays empty."""
        if counter is None or not instruction.strip():
            self._show("", fits=True)
            return
        try:
            prompt = build_prompt(instruction, self.text())
        except DollyError as e:
            self._show(str(e), fits=False)
            return

        def work(_progress: object, _cancel: threading.Event) -> int:
            return counter(prompt)

        job = self._count_job = Job("count", work, owner=self)
        job.done.connect(
            lambda n: job is self._count_job and self._show_count(n, max_new, context_length)
        )
        job.start()

    def _show_count(self, n: int, max_new: int, context_length: int) -> None:
        total = n + max_new
        text = f"prompt {n} + up to {max_new} new = {total} of {context_length}"
        if self.documents and not self.text().strip() and total < context_length:
            text += f" · {context_length - total} left for passages"
        if n >= context_length:
            self._show(f"{text}: the prompt does not fit; shorten the context", fits=False)
        elif total > context_length:
            room = context_length - n
            self._show(f"{text}: at most {room} new tokens fit", fits=True, warn=True)
        else:
            self._show(text, fits=True)

    def show_passage(
        self, prompt: int, passage: int, chunks: int, max_new: int, context_length: int
    ) -> None:
        """The prompt as sent: with the passage found in the documents (`passage` of its
        `prompt` tokens, from `chunks` chunks), counted whole by the model's tokenizer."""
        self._timer.stop()  # a count of the prompt without it, pending or running, is stale
        self._count_job = None
        of = f"{chunks} chunk" + ("s" if chunks != 1 else "")
        total = prompt + max_new
        self._show(
            f"prompt {prompt} (passage {passage}, {of}) + up to {max_new} new = {total} of "
            f"{context_length}",
            fits=True,
        )

    def _show(self, text: str, fits: bool, warn: bool = False) -> None:
        self.meter.setText(text)
        self.meter.setStyleSheet("" if fits and not warn else OVER)
        if fits != self.fits:
            self.fits = fits
            self.fit_changed.emit(fits)
