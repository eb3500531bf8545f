"""The Compare window: pick two or three installed variants of one model (or two models), give
one instruction (and a passage), and watch the answers side by side.

The work is compare.runs.run_comparison on a background Job (ui/background.py): the models
answer one after another on the CPU, each with the processor to itself, loaded all at once
when free memory holds them and one at a time when it does not (the window says which before
anything loads), greedy by default so that differences come from the weights. Each column
then shows its speed, first-token time, the peak memory its engine added and its agreement
with the reference (compare.runs.reference_for: the model's FP16 when installed, as `models
check` chooses). Blind A/B hides which column is which, figures included, until the person
votes; votes are kept per pair in compare/votes.py.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSize, Qt, QTimer, Signal
from PySide6.QtGui import QCloseEvent, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QApplication,
    QCheckBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from dolly_desktop.compare.runs import (
    ONE_AT_A_TIME,
    Comparison,
    Contender,
    contenders,
    plan_loading,
    plan_sentence,
    reference_for,
    run_comparison,
)
from dolly_desktop.compare.votes import record_vote, tally
from dolly_desktop.errors import DollyError
from dolly_desktop.generation.engine import ModelRef
from dolly_desktop.generation.params import RANGES, GenerationParams
from dolly_desktop.generation.prompt import build_prompt
from dolly_desktop.models.capacity import available_memory_bytes, format_bytes
from dolly_desktop.models.checks import read_check
from dolly_desktop.models.choice import PRECISION_RANK
from dolly_desktop.models.folder import inspect_model_dir
from dolly_desktop.models.store import InstalledModel, Store
from dolly_desktop.ui.background import Job
from dolly_desktop.ui.compare.column import AnswerColumn
from dolly_desktop.ui.compare.relay import Relay
from dolly_desktop.ui.look import style_message

LETTERS = "ABC"
FAIR = (
    "They answer one after another on the CPU, each with the processor to itself, so their "
    "speeds compare fairly."
)
PAINT_MS = 33  # streamed text is painted at most once a frame


def fit_screen(widget: QWidget, width: int, height: int) -> QSize:
    """`width` x `height`, or nine tenths of the screen's free area if that is smaller: a
    window larger than a small screen opens with its edges and buttons out of reach."""
    screen = widget.screen() or QApplication.primaryScreen()
    if screen is None:
        return QSize(width, height)
    room = screen.availableGeometry().size() * 0.9
    return QSize(min(width, room.width()), min(height, room.height()))


class CompareWindow(QWidget):
    run_ended = Signal()  # a run is over (answered, stopped or failed) and the columns say so
    voted = Signal(object)  # list[PairTally] the vote counted for

    def __init__(
        self,
        parent: QWidget | None = None,
        instruction: str = "",
        context: str = "",
        store: Store | None = None,
        params: GenerationParams | None = None,
        current: str | None = None,
        votes_file: Path | None = None,
        make_engine: Callable[[Path], Any] | None = None,
    ) -> None:
        super().__init__(parent, Qt.WindowType.Window)
        self.setWindowTitle("Compare variants")
        self.setObjectName("compare_window")
        self.store = store or Store()
        self.votes_file = votes_file
        self.make_engine = make_engine  # None: compare.runs' own (the app's engine on CPU)
        self.base_params = params or GenerationParams()
        self.job: Job | None = None
        self.result: Comparison | None = None
        self.relay: Relay | None = None
        self.order: list[Contender] = []  # who answers in which column, this run
        self.reference = ""  # the reference's label, this run
        self.blind_run = False
        self.rng = random.Random()
        self._build()
        self.instruction.setPlainText(instruction)
        self.context.setPlainText(context)
        self.refresh_models(current)
        self.timer = QTimer(self, interval=PAINT_MS)
        self.timer.timeout.connect(self._drain)
        self.resize(fit_screen(self, 1400, 900))

    # ---- building -----------------------------------------------------------------------
    def _build(self) -> None:
        # Check boxes on the window's background, not an item view's: the dark palette draws
        # an unticked item-view box in the colour of the view behind it (screenshots, Xvfb).
        self.models = QWidget(objectName="compare_models")
        self.models.setAccessibleName("Models to compare")
        self.model_boxes: list[tuple[QCheckBox, InstalledModel]] = []
        self.models_layout = QVBoxLayout(self.models)
        self.models_layout.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea(widgetResizable=True, frameShape=QFrame.Shape.NoFrame)
        scroll.setWidget(self.models)
        scroll.setMaximumHeight(200)
        self.pick_hint = QLabel("Tick 2 or 3 variants of one model, or two models.", wordWrap=True)
        left = QVBoxLayout()
        left.addWidget(QLabel("<b>Models</b>"))
        left.addWidget(scroll, 1)
        left.addWidget(self.pick_hint)

        self.instruction = QPlainTextEdit(objectName="compare_instruction")
        self.instruction.setPlaceholderText("The instruction every model answers…")
        self.instruction.setAccessibleName("Instruction")
        self.instruction.setMaximumHeight(110)
        self.context = QPlainTextEdit(objectName="compare_context")
        self.context.setPlaceholderText("A passage to work from (optional), the same for all")
        self.context.setAccessibleName("Passage")
        self.context.setMaximumHeight(80)
        self.greedy = QCheckBox("Greedy", objectName="compare_greedy", checked=True)
        self.greedy.setToolTip(
            "The most likely token every time: differences come from the weights, not from "
            "sampling. Off: each samples with the same seed."
        )
        self.max_new = QSpinBox(objectName="compare_max_new_tokens")
        r = RANGES["max_new_tokens"]
        self.max_new.setRange(int(r.low), int(r.high))
        self.max_new.setValue(self.base_params.max_new_tokens)
        self.max_new.setAccessibleName("Max new tokens")
        self.blind = QCheckBox("Blind A/B", objectName="compare_blind")
        self.blind.setToolTip(
            "Hide which answer is which (names, speed, memory) until you say which is better."
        )
        self.run_button = QPushButton("Compare", objectName="compare_run")
        self.run_button.setDefault(True)
        self.cancel_button = QPushButton("Cancel", objectName="compare_cancel")
        self.cancel_button.setToolTip("Stop every model: the one answering stops at once.")
        options = QHBoxLayout()
        options.addWidget(self.greedy)
        options.addSpacing(12)
        options.addWidget(QLabel("Max new tokens"))
        options.addWidget(self.max_new)
        options.addSpacing(12)
        options.addWidget(self.blind)
        options.addStretch(1)
        options.addWidget(self.run_button)
        options.addWidget(self.cancel_button)
        right = QVBoxLayout()
        right.addWidget(QLabel("<b>Instruction</b>"))
        right.addWidget(self.instruction)
        right.addWidget(QLabel("Passage to work from (optional)"))
        right.addWidget(self.context)
        right.addLayout(options)

        top = QHBoxLayout()
        top.addLayout(left, 1)
        top.addLayout(right, 2)

        self.plan = QLabel(objectName="compare_plan", wordWrap=True)
        style_message(self.plan, False)
        self.message = QLabel(objectName="compare_message", wordWrap=True)
        self.status = QLabel(objectName="compare_status", wordWrap=True)

        self.columns = [AnswerColumn(letter) for letter in LETTERS]
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        for col in self.columns:
            self.splitter.addWidget(col)

        self.vote_row = QWidget(objectName="compare_vote_row")
        vote = QHBoxLayout(self.vote_row)
        vote.setContentsMargins(0, 0, 0, 0)
        vote.addWidget(QLabel("<b>Which answer is better?</b>"))
        self.vote_buttons = []
        for i, letter in enumerate(LETTERS):
            b = QPushButton(f"{letter} is better", objectName=f"vote_{letter}")
            b.clicked.connect(lambda _c=False, i=i: self.vote(i))
            vote.addWidget(b)
            self.vote_buttons.append(b)
        self.tie_button = QPushButton("Tie", objectName="vote_tie")
        self.tie_button.clicked.connect(lambda: self.vote(None))
        vote.addWidget(self.tie_button)
        vote.addStretch(1)
        self.tally = QLabel(objectName="compare_tally", wordWrap=True)

        lay = QVBoxLayout(self)
        lay.addLayout(top, 0)
        lay.addWidget(self.plan)
        lay.addWidget(self.message)
        lay.addWidget(self.status)
        lay.addWidget(self.splitter, 1)
        lay.addWidget(self.vote_row)
        lay.addWidget(self.tally)

        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        QShortcut(QKeySequence("Ctrl+Return"), self, activated=self.run)
        QShortcut(QKeySequence("Escape"), self, activated=self.cancel)
        self.vote_row.hide()
        self.message.hide()
        self._show_columns(2)
        self._sync()

    # ---- the models ---------------------------------------------------------------------
    def refresh_models(self, current: str | None = None) -> None:
        """List the installed, runnable models; tick the variants of `current`'s model (the
        one in use), else of the first one, up to three, highest precision first."""
        installed = [m for m in self.store.list() if m.runnable]
        opened = _opened_folder(current, installed)
        if opened is not None:
            installed.append(opened)
        ticked = {m.path for m in self._picked()}
        if not ticked:
            name = next((m.name for m in installed if str(m.path) == current), None)
            name = name or (installed[0].name if installed else None)
            same = [m for m in installed if m.name == name]
            ticked = {m.path for m in sorted(same, key=_rank, reverse=True)[:3]}
        while self.models_layout.count():
            gone = self.models_layout.takeAt(0).widget()
            if gone is not None:
                gone.deleteLater()
        self.model_boxes = []
        for m in sorted(installed, key=lambda m: (m.name, _rank(m))):
            box = QCheckBox(_item_text(m), checked=m.path in ticked)
            box.toggled.connect(lambda _on: self._selection_changed())
            self.models_layout.addWidget(box)
            self.model_boxes.append((box, m))
        self.models_layout.addStretch(1)
        if not installed:
            self.pick_hint.setText(
                "No model is installed yet: get one in File → Model settings, then come back."
            )
        self._selection_changed()

    def _picked(self) -> list[InstalledModel]:
        return [m for box, m in self.model_boxes if box.isChecked()]

    def pick(self, labels: Sequence[str]) -> None:
        """Tick exactly these (NAME/VARIANT), for tests and for whoever opens the window."""
        for box, m in self.model_boxes:
            box.blockSignals(True)
            box.setChecked(m.label in labels)
            box.blockSignals(False)
        self._selection_changed()

    def plan_now(self) -> tuple[list[Contender], int | None, str]:
        """The picked models, the memory available now and how they will load; one sentence
        (DollyError) when they cannot be compared."""
        picked = self._picked()
        if len(picked) < 2:  # said for this window, not as the command line's flags
            raise DollyError("Tick two or three models to compare.")
        if len({m.name for m in picked}) > 1 and len(picked) > 2:
            raise DollyError("Three at once only as variants of one model: pick two models.")
        models = contenders([str(m.path) for m in picked], self.store)
        available = available_memory_bytes()
        return models, available, plan_loading(models, available)

    def _selection_changed(self) -> None:
        if self.job is not None and self.job.running:
            return
        try:
            models, available, how = self.plan_now()
        except DollyError as e:
            self.plan.setText(str(e))
            self.tally.clear()
            self._sync()
            return
        ref = reference_for(models, self.store, available)
        outside = all(ref.path != c.path for c in models)
        where = " (installed, not one of these)" if outside else ""
        self.plan.setText(
            f"{plan_sentence(models, available, how)} {FAIR} Agreement is measured against "
            f"{ref.label}{where}."
        )
        self._show_tally([c.label for c in models])
        self._sync()

    # ---- running ------------------------------------------------------------------------
    def params(self) -> GenerationParams:
        p = self.base_params
        greedy = self.greedy.isChecked()
        # Sampling: one seed for all, so that only the weights differ.
        seed = p.seed if p.seed is not None or greedy else self.rng.randrange(2**31)
        return GenerationParams(
            max_new_tokens=self.max_new.value(), temperature=p.temperature, top_p=p.top_p,
            top_k=p.top_k, greedy=greedy, repetition_penalty=p.repetition_penalty, seed=seed,
        )  # fmt: skip

    def run(self) -> None:
        if self.job is not None and self.job.running:
            return
        instruction, context = self.instruction.toPlainText(), self.context.toPlainText()
        try:
            build_prompt(instruction, context)  # an empty or too long prompt: one sentence
            models, available, how = self.plan_now()
            params = self.params()
        except DollyError as e:
            self._say(str(e), error=True)
            return
        self._say("")
        ref = reference_for(models, self.store, available)
        self.reference = ref.label
        self.blind_run = self.blind.isChecked()
        self.order = list(models)
        if self.blind_run:
            self.rng.shuffle(self.order)
        self._show_columns(len(self.order))
        for col, c in zip(self.columns, self.order, strict=False):
            col.start(c.label, col.letter if self.blind_run else c.label)
        self.vote_row.hide()
        self.result = None
        relay = self.relay = Relay()
        order, make_engine = list(self.order), self.make_engine
        extra = {"make_engine": make_engine} if make_engine is not None else {}

        def work(_progress: Any, cancel: Any) -> Comparison:
            return run_comparison(
                order, instruction, context, params, on_text=relay.text, on_stage=relay.stage,
                available=available, cancel=cancel, reference=ref, on_outcome=relay.outcome,
                **extra,
            )  # fmt: skip

        job = self.job = Job("Compare", work, owner=self)
        job.done.connect(self._done)
        job.failed.connect(self._failed)
        job.cancelled.connect(self._cancelled)
        job.ended.connect(self._ended)
        how_text = "all at once" if how != ONE_AT_A_TIME else "one at a time"
        self.status.setText(f"Loading {how_text}…")
        job.start()
        self.timer.start()
        self._sync()

    def cancel(self) -> None:
        if self.job is not None and self.job.running:
            self.job.cancel()
            self.status.setText("Stopping every model…")

    def column_of(self, label: str) -> AnswerColumn | None:
        return next((c for c in self.columns if c.label == label and c.isVisible()), None)

    def _shown(self, label: str) -> str:
        col = self.column_of(label)
        return col.letter if self.blind_run and col is not None else label

    def _drain(self) -> None:
        if self.relay is None:
            return
        for e in self.relay.take():
            col = self.column_of(e.label)
            if e.kind == "text" and col is not None:
                col.append(e.value)
            elif e.kind == "outcome" and col is not None:
                col.answered(e.value, self.blind_run)
            elif e.kind == "stage":
                if e.value == "agreement":
                    self.status.setText(f"Measuring agreement with {self.reference}…")
                elif col is not None:
                    what = {"loading": "Loading…", "generating": "Answering…"}.get(e.value, "")
                    col.state.setText(what)
                    self.status.setText(f"{self._shown(e.label)}: {what.lower()}")

    def _done(self, result: Comparison) -> None:
        self._drain()
        self.result = result
        if self.blind_run:
            self.status.setText("Which answer is better? Names and figures show after your vote.")
            for i, b in enumerate(self.vote_buttons):
                b.setVisible(i < len(self.order))
            self.vote_row.show()
        else:
            self._reveal()
            how = "loaded at once" if result.loading != ONE_AT_A_TIME else "loaded one at a time"
            self.status.setText(
                f"Done: {len(self.order)} models {how}, answered one after another."
            )

    def _failed(self, message: str) -> None:
        self._drain()
        self._after_stop("Not answered.")
        self._say(message, error=True)
        self.status.setText("The comparison failed.")

    def _cancelled(self) -> None:
        self._drain()
        self._after_stop("Stopped before it answered.")
        self.status.setText("Stopped: no model runs now.")

    def _after_stop(self, unanswered: str) -> None:
        for col in self.columns[: len(self.order)]:
            if col.outcome is None:
                col.state.setText(unanswered)
        self._reveal()  # nothing to vote on

    def _ended(self) -> None:
        self.timer.stop()
        self._sync()
        self.run_ended.emit()

    def _reveal(self) -> None:
        for col in self.columns[: len(self.order)]:
            col.reveal(self.reference)

    # ---- voting -------------------------------------------------------------------------
    def vote(self, column: int | None) -> None:
        """The answer in `column` (0, 1, 2) is better; None: a tie. Then the names show."""
        if not self.blind_run or self.result is None or not self.vote_row.isVisible():
            return
        labels = [c.label for c in self.order]
        winner = None if column is None else self.order[column].label
        try:
            counted = record_vote(labels, winner, self.votes_file)
        except (DollyError, OSError) as e:
            self._say(f"The vote could not be kept: {e}", error=True)
            return
        self.vote_row.hide()
        self._reveal()
        chosen = "a tie" if column is None else f"{LETTERS[column]} ({winner})"
        self.status.setText(f"You chose {chosen}.")
        self._show_tally(labels)
        self.voted.emit(counted)

    def _show_tally(self, labels: Sequence[str]) -> None:
        try:
            tallies = [
                tally(a, b, self.votes_file) for i, a in enumerate(labels) for b in labels[i + 1 :]
            ]
        except DollyError as e:
            self.tally.setText(str(e))
            return
        voted = [t.sentence() for t in tallies if t.votes]
        self.tally.setText("Blind votes: " + "; ".join(voted) + "." if voted else "")

    # ---- the rest -----------------------------------------------------------------------
    def _show_columns(self, n: int) -> None:
        for i, col in enumerate(self.columns):
            col.setVisible(i < n)
        self.splitter.setSizes([1] * n + [0] * (len(self.columns) - n))

    def _sync(self) -> None:
        running = self.job is not None and self.job.running
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.models.setEnabled(not running)
        self.blind.setEnabled(not running)

    def _say(self, text: str, error: bool = False) -> None:
        style_message(self.message, error)
        self.message.setText(text)
        self.message.setVisible(bool(text))

    def closeEvent(self, event: QCloseEvent) -> None:
        self.cancel()  # the models stop; the window can go
        super().closeEvent(event)


def _rank(m: InstalledModel) -> int:
    return PRECISION_RANK.get(m.variant, -1)


def _opened_folder(current: str | None, installed: list[InstalledModel]) -> InstalledModel | None:
    """The model the main window has open from a folder outside the store (--model FOLDER,
    File → Open model folder), described as the store describes its own, so it can be compared
    too; None when it is in the store, a server's URL or not a model folder."""
    if not current or any(str(m.path) == current for m in installed):
        return None
    path = Path(current)
    try:
        info = inspect_model_dir(path)
    except DollyError:
        return None
    ref = ModelRef.from_folder(path)
    return InstalledModel(
        name=ref.name,
        variant=ref.precision or path.name,
        path=path,
        size_bytes=info.weights_bytes,
        weights_bytes=info.weights_bytes,
        compression_rate=None,
        source=str(path),
        problem=None,
    )


def _item_text(m: InstalledModel) -> str:
    check = read_check(m.path)
    measured = f" · {check.top1:.0%} of tokens as {check.reference_variant}" if check else ""
    return f"{m.label} · {format_bytes(m.size_bytes)}{measured}"


def open_compare(
    parent: QWidget | None,
    instruction: str = "",
    context: str = "",
    current: str | None = None,
    params: GenerationParams | None = None,
    store: Store | None = None,
) -> CompareWindow:
    """Show the Compare window of `parent` (made the first time), with this instruction and
    passage (kept as they are when empty) and the variants of `current` (a model folder)."""
    window = parent.findChild(CompareWindow) if parent is not None else None
    if window is None:
        window = CompareWindow(parent, instruction, context, store, params, current)
    else:
        if instruction:
            window.instruction.setPlainText(instruction)
        if context:
            window.context.setPlainText(context)
        window.refresh_models(current)
    window.show()
    window.raise_()
    window.activateWindow()
    return window
