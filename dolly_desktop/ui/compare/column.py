"""One answer of the Compare window: whose it is (or a letter, blind), its text as it streams,
its speed and memory, and its agreement with the reference."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QTextCursor
from PySide6.QtWidgets import QFrame, QLabel, QPlainTextEdit, QVBoxLayout

from dolly_desktop.compare.runs import Outcome
from dolly_desktop.compare.votes import short_labels
from dolly_desktop.models.capacity import format_bytes

HIDDEN = "Hidden until you vote: speed and memory would tell which is which."


def metrics_text(o: Outcome) -> str:
    """`12.3 tok/s · first token 85 ms · peak memory 1.62 GB · 48 tokens`."""
    memory = "unknown" if o.peak_rss is None else format_bytes(o.peak_rss)
    return (
        f"{o.tokens_per_s:.1f} tok/s · first token {o.ttft_s * 1000:.0f} ms · "
        f"peak memory {memory} · {o.tokens} tokens"
    )


def agreement_text(o: Outcome, reference: str) -> str:
    """This answer's agreement with `reference` (a label), or why there is none."""
    ref = short_labels([o.label, reference])[1]
    if o.reference:
        return "The reference: the others are measured against it."
    if o.agreement_note:
        return f"No agreement: {o.agreement_note}."
    s = o.agreement
    if s is None:
        return ""
    parts = (
        "the same greedy answer"
        if s.median_first_divergence is None
        else f"greedy answers part at token {s.median_first_divergence:g}"
    )
    return f"{s.top1:.0%} of tokens as {ref} · KL {s.mean_kl:.3f} per token · {parts}"


class AnswerColumn(QFrame):
    def __init__(self, letter: str) -> None:
        super().__init__(objectName=f"column_{letter}")
        self.letter = letter
        self.label = ""  # whose answer: dolly-v2-3b/INT4
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.title = QLabel(objectName="column_title")
        font = self.title.font()
        font.setBold(True)
        font.setPointSizeF(font.pointSizeF() * 1.15)
        self.title.setFont(font)
        self.state = QLabel(objectName="column_state", wordWrap=True)
        self.text = QPlainTextEdit(objectName="column_text", readOnly=True)
        self.metrics = QLabel(objectName="column_metrics", wordWrap=True)
        self.agreement = QLabel(objectName="column_agreement", wordWrap=True)
        for w in (self.metrics, self.agreement):
            w.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        # Two lines kept for the agreement, so the answers' boxes line up across columns.
        self.agreement.setMinimumHeight(2 * self.agreement.fontMetrics().lineSpacing())
        lay = QVBoxLayout(self)
        lay.addWidget(self.title)
        lay.addWidget(self.state)
        lay.addWidget(self.text, 1)
        lay.addWidget(self.metrics)
        lay.addWidget(self.agreement)
        self.outcome: Outcome | None = None

    def start(self, label: str, shown_as: str) -> None:
        """A new run: `label` answers here, titled `shown_as` (its name, or a letter)."""
        self.label = label
        self.outcome = None
        self.title.setText(shown_as)
        self.title.setToolTip("" if shown_as == self.letter else label)
        self.setAccessibleName(f"Answer {shown_as}")
        self.state.setText("Waiting for its turn…")
        self.text.clear()
        self.metrics.clear()
        self.agreement.clear()

    def append(self, piece: str) -> None:
        cursor = self.text.textCursor()
        cursor.movePosition(QTextCursor.MoveOperation.End)
        cursor.insertText(piece)
        self.text.setTextCursor(cursor)
        self.text.ensureCursorVisible()

    def answered(self, o: Outcome, blind: bool) -> None:
        self.outcome = o
        self.state.setText("Stopped." if o.stop == "cancelled" else "Answered.")
        if self.text.toPlainText() != o.text:  # the whole answer, as the engine cleaned it
            self.text.setPlainText(o.text)
        self.metrics.setText(HIDDEN if blind else metrics_text(o))

    def reveal(self, reference: str) -> None:
        """Show the name, the figures and the agreement (after a blind vote, or at once)."""
        self.title.setText(self.label if self.title.text() != self.letter else
                           f"{self.letter}: {self.label}")  # fmt: skip
        self.title.setToolTip(self.label)
        if self.outcome is not None:
            self.metrics.setText(metrics_text(self.outcome))
            self.agreement.setText(agreement_text(self.outcome, reference))
