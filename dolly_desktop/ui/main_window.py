"""The main window: an instruction in, the response streamed out."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from PySide6.QtCore import (
    QEvent,
    QModelIndex,
    QObject,
    QRect,
    QSettings,
    QSize,
    Qt,
    QTemporaryDir,
    QTimer,
    Signal,
    Slot,
)
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence, QPainter, QPalette, QShortcut
from PySide6.QtWidgets import (
    QApplication,
    QBoxLayout,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListView,
    QListWidget,
    QMainWindow,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QSplitter,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTabWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from dolly_desktop import APP_NAME
from dolly_desktop.errors import DollyError
from dolly_desktop.generation.devices import list_devices
from dolly_desktop.generation.engine import REMOTE, GenerationResult
from dolly_desktop.generation.examples import CONTEXT_EXAMPLES, EXAMPLES
from dolly_desktop.generation.metrics import metrics_text
from dolly_desktop.generation.params import RANGES, GenerationParams
from dolly_desktop.generation.prompt import EMPTY_INSTRUCTION
from dolly_desktop.generation.tuning.calibration import LAST_RUNS, Mix, mix_from_runs
from dolly_desktop.history.store import Entry, History
from dolly_desktop.logs import log_file
from dolly_desktop.models.choice import best_installed, resolve_model
from dolly_desktop.models.store import Store
from dolly_desktop.ui.background import Job
from dolly_desktop.ui.compare import open_compare
from dolly_desktop.ui.context_pane import ContextPane
from dolly_desktop.ui.documents.ask import Found, find_passage
from dolly_desktop.ui.documents.picker import DocumentsPane
from dolly_desktop.ui.documents.sources import SourcesView
from dolly_desktop.ui.history_panel import HistoryPanel
from dolly_desktop.ui.look import ZOOM_RANGE, ZOOM_STEP, name_controls, style_message
from dolly_desktop.ui.model_setup.first_run import FirstRunPanel
from dolly_desktop.ui.model_setup.settings_dialog import SettingsDialog
from dolly_desktop.ui.settings import AppSettings
from dolly_desktop.ui.workers import EngineThread, GenerateRequest, LoadRequest

log = logging.getLogger(__name__)


WITH_PASSAGE = "  (with a passage)"
OPEN_PANE_LINES = 22  # the height, in lines of text, the editor takes when a pane opens
PICKED_KEY = "documents/picked"  # the collections ticked, kept between runs
FALLBACK_KEY = "documents/fallback"
FRAME_MS = 16  # the response is painted at most once per frame while it streams
ITEM_PAD = 6  # pixels added to each example's height
ITEM_MARGIN = 4  # pixels either side of an example's text
METER_MIN_TEXT = "prompt 1032 + up to 1000 new"  # the token meter's narrowest readable width


class WrappedItemDelegate(QStyledItemDelegate):
    """Examples drawn word-wrapped at the width they are measured at, with a little room:
    Qt's own wrapping, under Xvfb at 800x600, sized "Give five ideas for great weekend with
    family" for two lines and drew "…with …" over an empty second line."""

    def _width(self) -> int:
        view = self.parent()
        return max(40, view.viewport().width() - 2 * view.spacing() - 2 * ITEM_MARGIN)

    def sizeHint(self, option: QStyleOptionViewItem, index: QModelIndex) -> QSize:
        text = str(index.data() or "")
        box = QRect(0, 0, self._width(), 100_000)
        height = option.fontMetrics.boundingRect(box, Qt.TextFlag.TextWordWrap, text).height()
        return QSize(self._width() + 2 * ITEM_MARGIN, height + ITEM_PAD)

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: QModelIndex) -> None:
        opt = QStyleOptionViewItem(option)
        self.initStyleOption(opt, index)
        text, opt.text = opt.text, ""
        style = opt.widget.style() if opt.widget else QApplication.style()
        style.drawControl(QStyle.ControlElement.CE_ItemViewItem, opt, painter, opt.widget)
        selected = bool(opt.state & QStyle.StateFlag.State_Selected)
        role = QPalette.ColorRole.HighlightedText if selected else QPalette.ColorRole.Text
        painter.save()
        painter.setPen(opt.palette.color(role))
        painter.setFont(opt.font)
        flags = (
            Qt.TextFlag.TextWordWrap | Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter
        )
        painter.drawText(opt.rect.adjusted(ITEM_MARGIN, 0, -ITEM_MARGIN, 0), int(flags), text)
        painter.restore()


class SideScroll(QScrollArea):
    """The examples, history and parameters column: it scrolls when the window is shorter
    than it (800x600 with the first-run panel), and is never narrower than its content."""

    def __init__(self, content: QWidget) -> None:
        super().__init__(widgetResizable=True, frameShape=QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setWidget(content)
        self.setAccessibleName("Examples, history and parameters")

    def minimumSizeHint(self) -> QSize:
        bar = self.verticalScrollBar().sizeHint().width()
        return QSize(self.widget().minimumSizeHint().width() + bar, 120)

    def sizeHint(self) -> QSize:
        hint = self.widget().sizeHint()
        return QSize(hint.width() + self.verticalScrollBar().sizeHint().width(), hint.height())


class InstructionEdit(QPlainTextEdit):
    """Multi-line editor; Ctrl+Enter submits."""

    submit = Signal()

    def keyPressEvent(self, e) -> None:
        if e.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and (
            e.modifiers() & Qt.KeyboardModifier.ControlModifier
        ):
            self.submit.emit()
            return
        super().keyPressEvent(e)


class MainWindow(QMainWindow):
    # Requests to the engine thread: queued, so the GUI thread never waits on the engine.
    request_load = Signal(object)  # LoadRequest
    request_generate = Signal(object)  # GenerateRequest
    # Emitted on the GUI thread when a load or a generation has ended, however it ended.
    load_done = Signal()
    response_done = Signal()

    def __init__(self, model: str | None = None, scripted: bool = False) -> None:
        """`scripted` (--screenshot): the person's settings are read but every change goes to
        a throw-away copy, and no history is read or written; both stay as they were."""
        super().__init__()
        self.setWindowTitle(APP_NAME)
        self.settings = _scratch_settings(self) if scripted else AppSettings()
        self.engine_thread = EngineThread()
        self.worker = self.engine_thread.worker
        keep = self.settings.history_enabled and not scripted
        self.history = History(enabled=keep)
        self.model_dir: str | None = None  # what is loaded: a model folder or a server's URL
        self.model_is_remote = False
        self.generating = False
        self.loading = False
        self.last_result: GenerationResult | None = None
        self.settings_dialog: SettingsDialog | None = None
        self._response_text = ""
        self._search_job: Job | None = None  # finding a passage in the documents
        self._build()
        self.documents_pane.may_watch = not scripted  # a screenshot re-indexes nothing
        self._base_point_size = QApplication.font(self).pointSizeF()
        self._name_controls()
        self._connect()
        if self.settings.zoom:
            self.zoom(0)
        self._restore(model)

    # ---- building -------------------------------------------------------------------
    def _build(self) -> None:
        self._build_menus()
        self.banner = QLabel(wordWrap=True, objectName="banner")
        self.banner.setTextFormat(Qt.TextFormat.RichText)
        self.banner.setOpenExternalLinks(False)
        self.banner.hide()
        self.open_button = QPushButton("Open model folder…")
        self.open_button.hide()
        self.settings_button = QPushButton("Model settings…")
        self.settings_button.hide()

        self.examples = QListWidget(objectName="examples")
        self.examples.addItems(EXAMPLES)
        for instruction, _passage in CONTEXT_EXAMPLES:
            self.examples.addItem(f"{instruction}{WITH_PASSAGE}")
        self.examples.setWordWrap(True)
        self.examples.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.examples.setSpacing(2)
        self.examples.setItemDelegate(WrappedItemDelegate(self.examples))
        self.examples.setResizeMode(QListView.ResizeMode.Adjust)  # measured again on resize
        self.examples.setToolTip("Click an example to use it as the instruction")
        self.history_panel = HistoryPanel(self.history)
        self.side_tabs = QTabWidget(objectName="side_tabs")
        self.side_tabs.addTab(self.examples, "Examples")
        self.side_tabs.addTab(self.history_panel, "History")

        self.instruction = InstructionEdit(objectName="instruction")
        self.instruction.setPlaceholderText("Type an instruction for Dolly…  (Ctrl+Enter sends)")
        self.submit_button = QPushButton("Submit")
        self.submit_button.setDefault(True)
        self.submit_button.setToolTip("Generate a response (Ctrl+Enter)")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop generating (Esc)")
        self.stop_button.setEnabled(False)
        self.clear_button = QPushButton("Clear")
        self.copy_button = QPushButton("Copy response")
        self.copy_button.setEnabled(False)
        buttons = QHBoxLayout()
        for b in (self.submit_button, self.stop_button, self.clear_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        buttons.addWidget(self.copy_button)

        self.response = QTextBrowser(objectName="response")
        self.response.setOpenExternalLinks(True)
        self.response.setPlaceholderText("The response appears here as Dolly writes it.")

        editor = QWidget()
        ev = QVBoxLayout(editor)
        ev.setContentsMargins(0, 0, 0, 0)
        ev.addWidget(QLabel("Instruction"))
        ev.addWidget(self.instruction, 2)
        self.context_pane = ContextPane()
        self.documents_pane = DocumentsPane()
        passages = self.passages = QWidget(objectName="passages")
        ph = self.passages_row = QBoxLayout(QBoxLayout.Direction.LeftToRight, passages)
        ph.setContentsMargins(0, 0, 0, 0)
        ph.addWidget(self.context_pane, 3)
        ph.addWidget(self.documents_pane, 0)
        ev.addWidget(passages, 0)
        passages.installEventFilter(self)  # a new width may stack the panes, or unstack them

        def fit_panes(_open: bool) -> None:
            # Room for a pane only while it is open; collapsed, each is one line.
            ctx, docs = self.context_pane.toggle.isChecked(), self.documents_pane.toggle.isChecked()
            ev.setStretchFactor(passages, 3 if ctx or docs else 0)
            ph.setStretchFactor(self.documents_pane, 2 if docs else 0)
            self._arrange_passages()
            if _open:  # an open pane needs room under the instruction: take it from below
                top, below = self.center.sizes()
                need = self.fontMetrics().height() * OPEN_PANE_LINES
                if top < need < top + below:
                    self.center.setSizes([need, top + below - need])

        self.context_pane.toggle.toggled.connect(fit_panes)
        self.documents_pane.toggle.toggled.connect(fit_panes)
        ev.addLayout(buttons)
        responder = QWidget()
        rv = QVBoxLayout(responder)
        rv.setContentsMargins(0, 0, 0, 0)
        rv.addWidget(QLabel("Response"))
        self.sources_view = SourcesView()  # under the answer, when documents were used
        self.answer_split = QSplitter(Qt.Orientation.Vertical)
        self.answer_split.addWidget(self.response)
        self.answer_split.addWidget(self.sources_view)
        self.answer_split.setStretchFactor(0, 3)
        self.answer_split.setStretchFactor(1, 2)
        rv.addWidget(self.answer_split)
        self.center = QSplitter(Qt.Orientation.Vertical)
        self.center.addWidget(editor)
        self.center.addWidget(responder)
        self.center.setStretchFactor(0, 1)
        self.center.setStretchFactor(1, 3)

        side = QWidget()
        sv = QVBoxLayout(side)
        sv.setContentsMargins(0, 0, 0, 0)
        sv.addWidget(self.side_tabs, 1)
        sv.addWidget(self._build_params())
        self.side = SideScroll(side)

        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(self.side)
        self.splitter.addWidget(self.center)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setSizes([300, 700])

        root = QWidget()
        lay = QVBoxLayout(root)
        top = QHBoxLayout()
        top.addWidget(self.banner, 1)
        top.addWidget(self.settings_button)
        top.addWidget(self.open_button)
        lay.addLayout(top)
        self.first_run = FirstRunPanel(Store())
        self.first_run.hide()
        lay.addWidget(self.first_run)
        lay.addWidget(self.splitter, 1)
        self.setCentralWidget(root)

        self.model_label = QLabel("No model")
        self.stats_label = QLabel("")
        self.busy = QProgressBar(maximumWidth=120, maximumHeight=14)
        self.busy.setRange(0, 0)
        self.busy.hide()
        sb = self.statusBar()
        sb.addWidget(self.stats_label, 1)
        sb.addPermanentWidget(self.busy)
        sb.addPermanentWidget(self.model_label)
        self.live_timer = QTimer(self, interval=250)
        self.paint_timer = QTimer(self, singleShot=True)
        self._last_paint = 0.0
        self.resize(1100, 720)

    def _name_controls(self) -> None:
        self.instruction.setAccessibleName("Instruction")
        self.instruction.setAccessibleDescription("What you want Dolly to do; Ctrl+Enter sends")
        self.response.setAccessibleName("Response")
        self.examples.setAccessibleName("Examples")
        self.side_tabs.setAccessibleName("Examples and history")
        self.history_panel.setAccessibleName("History")
        self.seed_check.setAccessibleName("Fixed seed")
        self.seed.setAccessibleName("Seed")
        self.submit_button.setAccessibleDescription("Generate a response (Ctrl+Enter)")
        self.stop_button.setAccessibleDescription("Stop generating (Esc)")
        name_controls(self)

    def _arrange_passages(self) -> None:
        """Context and Documents side by side while both have room, else one above the
        other: an open Documents pane beside the Context line in an 800 px window would
        squeeze the token meter to a word per line."""
        docs = self.documents_pane
        meter_min = self.fontMetrics().horizontalAdvance(METER_MIN_TEXT)
        need = (
            docs.minimumSizeHint().width()
            + self.context_pane.toggle.sizeHint().width()
            + meter_min
            + 3 * self.passages_row.spacing()
        )
        wide = not docs.toggle.isChecked() or self.passages.width() >= need
        direction = QBoxLayout.Direction.LeftToRight if wide else QBoxLayout.Direction.TopToBottom
        if self.passages_row.direction() != direction:
            self.passages_row.setDirection(direction)
        # Side by side the Context line keeps its width (the meter's room); one above the
        # other, a collapsed Context line takes no height from the Documents list.
        ctx = self.context_pane.toggle.isChecked()
        self.passages_row.setStretchFactor(self.context_pane, 3 if wide or ctx else 0)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is getattr(self, "passages", None) and event.type() == QEvent.Type.Resize:
            self._arrange_passages()
        return super().eventFilter(watched, event)

    def _build_params(self) -> QGroupBox:
        box = QGroupBox("Parameters")
        form = QFormLayout(box)
        self.spins: dict[str, QSpinBox | QDoubleSpinBox] = {}
        for name in ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty"):
            r = RANGES[name]
            spin: QSpinBox | QDoubleSpinBox = QSpinBox() if r.integer else QDoubleSpinBox()
            if isinstance(spin, QDoubleSpinBox):
                spin.setDecimals(2)
            spin.setRange(r.low, r.high)
            spin.setSingleStep(r.step)
            spin.setObjectName(name)
            spin.setToolTip(f"{r.label}: {r.low:g} to {r.high:g}")
            self.spins[name] = spin
            form.addRow(r.label.capitalize(), spin)
        self.spins["top_k"].setSpecialValueText("off")
        self.greedy = QCheckBox("Greedy (no sampling)", objectName="greedy")
        form.addRow(self.greedy)
        self.seed_check = QCheckBox("Fixed seed", objectName="seed_check")
        self.seed = QSpinBox(objectName="seed")
        self.seed.setRange(int(RANGES["seed"].low), int(RANGES["seed"].high))
        form.addRow(self.seed_check, self.seed)
        self.device = QComboBox(objectName="device")
        for d in list_devices():
            self.device.addItem(d.id, d.id)
            self.device.setItemData(self.device.count() - 1, d.name, Qt.ItemDataRole.ToolTipRole)
        form.addRow("Device", self.device)
        return box

    def _build_menus(self) -> None:
        m = self.menuBar().addMenu("&File")
        self.open_action = QAction("&Open model folder…", self, shortcut=QKeySequence.Open)
        m.addAction(self.open_action)
        self.settings_action = QAction("Model &settings…", self, shortcut=QKeySequence("Ctrl+,"))
        m.addAction(self.settings_action)
        m.addSeparator()
        quit_action = QAction("&Quit", self, shortcut=QKeySequence("Ctrl+Q"))
        quit_action.triggered.connect(self.close)
        m.addAction(quit_action)
        v = self.menuBar().addMenu("&View")
        self.zoom_in_action = QAction("Zoom &in", self)
        self.zoom_in_action.setShortcuts([QKeySequence("Ctrl+="), QKeySequence.ZoomIn])
        self.zoom_out_action = QAction("Zoom &out", self, shortcut=QKeySequence.ZoomOut)
        self.zoom_reset_action = QAction("&Actual size", self, shortcut=QKeySequence("Ctrl+0"))
        for action, steps in (
            (self.zoom_in_action, ZOOM_STEP),
            (self.zoom_out_action, -ZOOM_STEP),
            (self.zoom_reset_action, None),
        ):
            action.triggered.connect(lambda _c=False, s=steps: self.zoom(s))
            v.addAction(action)
        v.addSeparator()
        self.compare_action = QAction("&Compare variants…", self)
        self.compare_action.triggered.connect(self.open_compare)
        v.addAction(self.compare_action)
        h = self.menuBar().addMenu("&Help")
        self.shortcuts_action = QAction("&Keyboard shortcuts", self)
        self.shortcuts_action.triggered.connect(self.show_shortcuts)
        h.addAction(self.shortcuts_action)
        self.about_action = QAction(f"&About {APP_NAME}", self)
        h.addAction(self.about_action)

    def _connect(self) -> None:
        w = self.worker
        q = Qt.ConnectionType.QueuedConnection
        self.request_load.connect(w.load, q)
        self.request_generate.connect(w.generate, q)
        w.notice.connect(self._show_error, q)
        w.loading.connect(self._on_loading, q)
        w.loaded.connect(self._on_loaded, q)
        w.load_failed.connect(self._on_load_failed, q)
        w.stream_ready.connect(self._on_stream_ready, q)
        self.paint_timer.timeout.connect(self._paint)
        w.finished.connect(self._on_finished, q)
        w.failed.connect(self._on_failed, q)
        self.instruction.submit.connect(self.submit)
        self.submit_button.clicked.connect(self.submit)
        self.stop_button.clicked.connect(self.stop)
        QShortcut(QKeySequence(Qt.Key.Key_Escape), self, activated=self.stop)
        self.clear_button.clicked.connect(self.clear)
        self.copy_button.clicked.connect(self.copy_response)
        self.examples.itemClicked.connect(lambda item: self.use_example(item.text()))
        self.instruction.textChanged.connect(self.context_pane.schedule_count)
        self.spins["max_new_tokens"].valueChanged.connect(self.context_pane.schedule_count)
        self.context_pane.changed.connect(self._count_prompt)
        self.context_pane.fit_changed.connect(lambda _fits: self._update_buttons())
        self.documents_pane.changed.connect(self._documents_changed)
        self.documents_pane.fallback.toggled.connect(
            lambda on: self.settings.qs.setValue(FALLBACK_KEY, on)
        )
        self.documents_pane.notice.connect(self._show_error)
        self.sources_view.notice.connect(self._show_error)
        self.open_action.triggered.connect(self.choose_model_folder)
        self.open_button.clicked.connect(self.choose_model_folder)
        self.settings_button.clicked.connect(self.open_settings)
        self.settings_action.triggered.connect(self.open_settings)
        self.about_action.triggered.connect(self.show_about)
        self.greedy.toggled.connect(self._sync_sampling_controls)
        self.seed_check.toggled.connect(self.seed.setEnabled)
        self.device.activated.connect(lambda _i: self._reload())
        self.live_timer.timeout.connect(self._show_live_stats)
        self.history_panel.selected.connect(self.show_entry)
        self.history_panel.rerun.connect(self.rerun_entry)
        self.history_panel.enabled_changed.connect(self.set_history_enabled)
        self._connect_first_run()
        self.response_done.connect(self.history_panel.refresh)

    # ---- state ------------------------------------------------------------------------
    def _restore(self, model: str | None) -> None:
        s = self.settings
        if not s.window_geometry.isEmpty():
            self.restoreGeometry(s.window_geometry)
        if not s.window_splitter.isEmpty():
            self.splitter.restoreState(s.window_splitter)
        self.set_params(s.load_params())
        i = self.device.findData(s.device)
        self.device.setCurrentIndex(i if i >= 0 else 0)
        self.documents_pane.set_picked(_as_list(s.qs.value(PICKED_KEY)))
        self.documents_pane.fallback.setChecked(str(s.qs.value(FALLBACK_KEY)) == "true")
        self.documents_pane.refresh()
        folder = model or s.model_folder
        if not model and s.remote_url:
            self.load_remote(s.remote_url, s.remote_key)
        elif folder:
            self.load_model(folder)
        else:
            self._first_start()
        for notice in self.history.take_notices():
            self._show_error(notice)
        self._update_buttons()

    def params(self) -> GenerationParams:
        values = {name: spin.value() for name, spin in self.spins.items()}
        values["max_new_tokens"] = int(values["max_new_tokens"])
        values["top_k"] = int(values["top_k"])
        seed = self.seed.value() if self.seed_check.isChecked() else None
        return GenerationParams(greedy=self.greedy.isChecked(), seed=seed, **values)

    def set_params(self, p: GenerationParams) -> None:
        for name, spin in self.spins.items():
            spin.setValue(getattr(p, name))
        self.greedy.setChecked(p.greedy)
        self.seed_check.setChecked(p.seed is not None)
        self.seed.setValue(p.seed or 0)
        self.seed.setEnabled(p.seed is not None)
        self._sync_sampling_controls()

    def _sync_sampling_controls(self) -> None:
        sampling = not self.greedy.isChecked()
        for name in ("temperature", "top_p", "top_k"):
            self.spins[name].setEnabled(sampling)
        self.seed_check.setEnabled(sampling)
        self.seed.setEnabled(sampling and self.seed_check.isChecked())

    def _update_buttons(self) -> None:
        ready = self.model_dir is not None and not self.loading
        fits = self.context_pane.fits
        self.submit_button.setEnabled(ready and not self.generating and fits)
        self.stop_button.setEnabled(self.generating)
        self.device.setEnabled(not self.generating and not self.loading)
        self.open_action.setEnabled(not self.generating)
        self.copy_button.setEnabled(bool(self._response_text) and not self.generating)

    # ---- model ------------------------------------------------------------------------
    def load_model(self, folder: str) -> None:
        try:  # a store name (dolly-v2-3b, dolly-v2-3b/INT4) as well as a folder
            folder = str(resolve_model(folder, self.first_run.store))
        except DollyError as e:
            self._show_error(str(e), offer_open=True)
            return
        self.loading = True
        self.model_dir = None
        self._update_buttons()
        options = self.settings.engine_options()
        options["mix"] = self.mix()
        self.request_load.emit(LoadRequest(folder, self.device.currentData(), options))

    def load_remote(self, url: str, api_key: str = "") -> None:
        self.loading = True
        self.model_dir = None
        self._update_buttons()
        self.request_load.emit(LoadRequest(url, remote=True, api_key=api_key))

    def mix(self) -> Mix:
        """The lengths calibration weighs: prompt and answer as this person's last runs had
        them (generation/tuning/calibration.py)."""
        return mix_from_runs(
            (e.input_tokens, e.generated_tokens) for e in self.history.list(limit=LAST_RUNS)
        )

    def open_compare(self) -> QWidget:
        """The Compare window, with this instruction and passage and the loaded model's
        variants (ui/compare/)."""
        return open_compare(
            self,
            self.instruction.toPlainText(),
            self.context_pane.text(),
            self.model_dir,
            self.params(),
            self.first_run.store,
        )

    def open_settings(self) -> SettingsDialog:
        if self.settings_dialog is None:
            self.settings_dialog = SettingsDialog(self, self.settings)
            self.settings_dialog.model_chosen.connect(lambda folder, _d: self.load_model(folder))
            self.settings_dialog.remote_chosen.connect(self.load_remote)
            self.settings_dialog.device_chosen.connect(self._device_from_settings)
            self.settings_dialog.refresh_hub()  # the OpenVINO org's current repos, when online
        self.settings_dialog.current_folder = self.model_dir
        self.settings_dialog.mix = self.mix()
        self.settings_dialog.refresh()
        self.settings_dialog.show()
        self.settings_dialog.raise_()
        return self.settings_dialog

    def _device_from_settings(self, device: str) -> None:
        i = self.device.findData(device)
        if i >= 0:
            self.device.setCurrentIndex(i)
        self._reload()

    def _reload(self) -> None:
        self.settings.device = self.device.currentData()
        folder = self.model_dir  # what this window has loaded, if it is a local model
        if folder and not self.model_is_remote and not self.generating:
            self.load_model(folder)

    def choose_model_folder(self) -> None:
        start = self.settings.model_folder or str(Path.home())
        folder = QFileDialog.getExistingDirectory(self, "Open an OpenVINO model folder", start)
        if folder:
            self.load_model(folder)

    @Slot(str, str)
    def _on_loading(self, folder: str, device: str) -> None:
        self.busy.show()
        self.model_label.setText(f"Loading {Path(folder).name} on {device}…")
        self._hide_banner()

    @Slot(str, str, float)
    def _on_loaded(self, folder: str, device: str, seconds: float) -> None:
        self.loading = False
        self.context_pane.schedule_count()  # the new model's tokenizer counts now
        self.model_dir = folder
        self.model_is_remote = device == REMOTE
        self.documents_pane.model_folder = None if self.model_is_remote else folder
        self.first_run.hide()
        if self.settings_dialog is not None:
            self.settings_dialog.model_loaded(folder)
        self.busy.hide()
        if self.model_is_remote:  # `folder` is the server's URL: restored at the next start
            self.settings.remote_url = folder
        else:
            self.settings.model_folder = folder
            self.settings.remote_url = ""
            self.settings.device = device
        self.model_label.setText(f"{_model_name(folder)} · {device}")
        self.model_label.setToolTip(folder)
        self.stats_label.setText(f"Model loaded in {seconds:.1f} s")
        self._update_buttons()
        self.instruction.setFocus()
        self.load_done.emit()

    @Slot(str)
    def _on_load_failed(self, message: str) -> None:
        self.loading = False
        self.model_dir = None
        self.busy.hide()
        self.model_label.setText("No model")
        if self.settings_dialog is not None:
            self.settings_dialog.model_failed(message)
        self._show_error(f"The model could not be loaded. {message}", offer_open=True)
        self._update_buttons()
        self.load_done.emit()

    def _first_start(self) -> None:
        """No model chosen yet: the best installed one loads without asking; with none, the
        first-run panel offers the one this machine can run best."""
        best = best_installed(self.first_run.store.list())
        if best is not None:
            self.load_model(str(best.path))
            return
        self.first_run.advise()
        self.first_run.show()

    def _connect_first_run(self) -> None:
        p = self.first_run
        p.installed.connect(self.load_model)
        p.choose_other.connect(self.open_settings)
        p.import_folder.connect(lambda: self.open_settings().import_folder())
        p.use_remote.connect(lambda: self.open_settings().show_remote())
        p.open_folder.connect(self.choose_model_folder)

    # ---- generation -------------------------------------------------------------------
    def submit(self) -> None:
        if self.generating or self.loading or self.model_dir is None:
            return
        if not self.context_pane.fits:
            self._show_error(f"The prompt does not fit: {self.context_pane.meter.text()}.")
            return
        text = self.instruction.toPlainText()
        try:
            params = self.params()
        except Exception as e:  # spinboxes keep values in range; this is a safety net
            self._show_error(str(e))
            return
        if not text.strip():
            self._show_error(EMPTY_INSTRUCTION)
            return
        names = self.documents_pane.picked()
        context = self.context_pane.text()
        if names and context.strip():
            self._show_error("Dolly takes one passage: clear the Context, or untick the documents.")
            return
        self.settings.save_params(params)
        self._hide_banner()
        self.generating = True
        self.last_result = None
        self._response_text = ""
        self.worker.take_text()  # nothing from an earlier answer
        self.response.clear()
        self.sources_view.set_sources([])
        self.stats_label.setText("Waiting for the first token…")
        self._update_buttons()
        self.live_timer.start()
        if names:
            self._ask_documents(names, text, params)
            return
        self.request_generate.emit(GenerateRequest(text, params, self.history, context))

    def _ask_documents(self, names: list[str], text: str, params: GenerationParams) -> None:
        """Find the passage on a Job (the GUI thread never searches), then generate with it."""
        engine = self.worker.engine
        assert engine is not None  # submit checked that a model is loaded
        count, n, max_new = engine.count_tokens, engine.context_length, params.max_new_tokens
        fallback = self.documents_pane.fallback.isChecked()

        def work(_progress: object, cancel: threading.Event) -> Found:
            return find_passage(names, text, count, n, max_new, cancel)

        job = self._search_job = Job("search documents", work, owner=self)
        job.done.connect(lambda found: self._passage_found(found, text, params, fallback))
        job.failed.connect(self._on_failed)
        job.cancelled.connect(self._search_cancelled)
        job.ended.connect(lambda: setattr(self, "_search_job", None))
        self.stats_label.setText(f"Searching {', '.join(names)}…")
        job.start()

    def _passage_found(
        self, found: Found, text: str, params: GenerationParams, fallback: bool
    ) -> None:
        request = GenerateRequest(text, params, self.history)
        p = found.passage
        if p.hits:
            n = self.worker.engine.context_length if self.worker.engine else 0
            self.context_pane.show_passage(
                p.prompt_tokens, found.passage_tokens, len(p.hits), params.max_new_tokens, n
            )
            self.sources_view.set_sources(found.sources)
            request = GenerateRequest(text, params, self.history, p.text, tuple(found.sources))
        elif fallback:
            self.sources_view.set_sources(
                [], f"{found.nothing()}: Dolly answered without a passage."
            )
        else:
            self._end_generation()
            self.stats_label.setText("")
            self._show_banner(
                _escape(f"{found.nothing()}. Tick “If nothing matches, answer without a "
                        "passage” in Documents to have Dolly answer anyway.")
            )  # fmt: skip
            self._update_buttons()
            return
        self.stats_label.setText("Waiting for the first token…")
        self.request_generate.emit(request)

    def _search_cancelled(self) -> None:
        self._end_generation()
        self.stats_label.setText("Stopped before the answer began.")
        self._update_buttons()

    def _documents_changed(self) -> None:
        names = self.documents_pane.picked()
        self.settings.qs.setValue(PICKED_KEY, names)
        self.context_pane.documents = bool(names)
        self.context_pane.schedule_count()

    def stop(self) -> None:
        if self._search_job is not None:
            self._search_job.cancel()  # no answer has begun: nothing to stop in the engine
            return
        if self.generating:
            self.worker.cancel()  # thread-safe; the engine stops within one token
            self.stats_label.setText("Stopping…")

    @Slot()
    def _on_stream_ready(self) -> None:
        """New text: painted now if the last paint is a frame old, else at the next frame."""
        if self.paint_timer.isActive():
            return
        wait_ms = FRAME_MS - (time.monotonic() - self._last_paint) * 1000
        if wait_ms <= 0:
            self._paint()
        else:
            self.paint_timer.start(int(wait_ms) + 1)

    def _paint(self) -> None:
        """Everything streamed so far, rendered as Markdown as the final answer will be: no
        change under the reader's eyes when it ends."""
        text = self.worker.take_text()
        if not text:
            return
        self._response_text += text
        self._render(self._response_text)
        self._last_paint = time.monotonic()

    def _render(self, text: str) -> None:
        bar = self.response.verticalScrollBar()
        at_end, where = bar.value() >= bar.maximum() - 4, bar.value()
        self.response.setMarkdown(text)
        bar.setValue(bar.maximum() if at_end else where)  # follow unless the reader scrolled up

    def _show_live_stats(self) -> None:
        n, tps = self.worker.progress()
        if n:
            self.stats_label.setText(metrics_text(n, tps, sep=" · "))

    @Slot(object)
    def _on_finished(self, result: GenerationResult) -> None:
        self._end_generation()
        self.last_result = result
        self.paint_timer.stop()
        shown = self._response_text
        self._response_text += self.worker.take_text()
        if result.text != self._response_text:  # the engine's last word, if it differs
            self._response_text = result.text
        if self._response_text != shown:
            self._render(self._response_text)
        self.stats_label.setText(result.metrics_text(" · "))
        self._update_buttons()

    @Slot(str)
    def _on_failed(self, message: str) -> None:
        self._end_generation()
        self.paint_timer.stop()
        self._paint()  # what was streamed before the failure stays on screen
        self.stats_label.setText("")
        self._show_error(message)
        self._update_buttons()

    def _end_generation(self) -> None:
        self.generating = False
        self.live_timer.stop()
        QTimer.singleShot(0, self.response_done.emit)  # after the caller updated the view

    # ---- history ----------------------------------------------------------------------
    def show_entry(self, entry: Entry) -> None:
        """Show a past run and restore its instruction and parameters."""
        if self.generating:
            return
        self.instruction.setPlainText(entry.instruction)
        # A passage from documents is shown as its sources (as it was: the chunks' text as
        # Dolly read it), and its collections are ticked, so a rerun asks them again.
        self.context_pane.set_text("" if entry.sources else entry.context)
        self.sources_view.set_sources(entry.sources)
        if entry.sources:
            self.documents_pane.set_picked({str(s.get("collection")) for s in entry.sources})
        self.set_params(entry.params)
        self._response_text = entry.response
        self.response.setMarkdown(entry.response)
        self.last_result = None
        model = f"{entry.model.name} {entry.model.precision} on {entry.device}"
        self.stats_label.setText(f"{entry.metrics_text(' · ')} · {model}")
        self._update_buttons()

    def rerun_entry(self, entry: Entry) -> None:
        self.show_entry(entry)
        self.submit()

    def set_history_enabled(self, keep: bool) -> None:
        self.settings.history_enabled = keep
        if self.generating:
            return  # takes effect from the next window; the running recorder stays valid
        self.history = History(enabled=keep)
        for notice in self.history.take_notices():
            self._show_error(notice)
        self.history_panel.set_history(self.history)

    # ---- small actions ----------------------------------------------------------------
    def _count_prompt(self) -> None:
        """The token meter, counted with the loaded model's own tokenizer."""
        engine = None if self.loading else self.worker.engine
        self.context_pane.count(
            self.instruction.toPlainText(),
            int(self.spins["max_new_tokens"].value()),
            engine.count_tokens if engine is not None else None,
            engine.context_length if engine is not None else 0,
        )

    # ---- look -------------------------------------------------------------------------
    def zoom(self, steps: int | None) -> None:
        """Make every text in the window bigger or smaller (None: back to the normal size):
        the boxes, history, parameters, buttons, menus and status bar; kept between runs.
        The window's font propagates to every widget that has not set a font of its own."""
        z = 0 if steps is None else self.settings.zoom + steps
        z = max(ZOOM_RANGE[0], min(ZOOM_RANGE[1], z))
        self.settings.zoom = z
        font = QApplication.font(self)
        font.setPointSizeF(max(4.0, self._base_point_size + z))
        self.setFont(font)

    def text_point_size(self) -> float:
        return self.response.font().pointSizeF()

    def shortcuts(self) -> list[tuple[str, str]]:
        """Every keyboard shortcut, as Help lists them."""
        pairs = [("Ctrl+Enter", "Submit the instruction"), ("Esc", "Stop generating")]
        for action in self.findChildren(QAction):
            # The first key only: Zoom in's second (Ctrl++, Shift on most keyboards) is
            # there for keyboards that have it, not a second thing to learn.
            keys = [k.toString(QKeySequence.SequenceFormat.NativeText) for k in action.shortcuts()]
            if keys and keys[0]:
                pairs.append((keys[0], action.text().replace("&", "")))
        return pairs

    def show_shortcuts(self) -> None:
        rows = "".join(
            f"<tr><td style='padding-right:18px'><b>{k}</b></td><td>{w}</td></tr>"
            for k, w in self.shortcuts()
        )
        QMessageBox.information(
            self, "Keyboard shortcuts", f"<table cellspacing='3'>{rows}</table>"
        )

    def use_example(self, text: str) -> None:
        for instruction, passage in CONTEXT_EXAMPLES:
            if text in (instruction, f"{instruction}{WITH_PASSAGE}"):
                self.instruction.setPlainText(instruction)
                self.context_pane.set_text(passage)
                return
        self.instruction.setPlainText(text)
        self.instruction.setFocus()

    def clear(self) -> None:
        if self.generating:
            return
        self.instruction.clear()
        self.response.clear()
        self.sources_view.set_sources([])
        self._response_text = ""
        self.last_result = None
        self.stats_label.setText("")
        self._hide_banner()
        self._update_buttons()

    def copy_response(self) -> None:
        QApplication.clipboard().setText(self._response_text)
        self.statusBar().showMessage("Response copied", 3000)

    def show_about(self) -> None:
        from dolly_desktop.ui.about import show_about

        show_about(self, self.model_dir)

    def _show_banner(self, html: str, offer_open: bool = False, error: bool = False) -> None:
        style_message(self.banner, error)  # light in either scheme: dark text on it
        self.banner.setText(html)
        self.banner.show()
        self.open_button.setVisible(offer_open)
        self.settings_button.setVisible(offer_open)

    def _show_error(self, message: str, offer_open: bool = False) -> None:
        log.warning("shown to the user: %s", message)
        self._show_banner(
            f"{_escape(message)} <span style='color:#666'>(log: {_escape(log_file())})</span>",
            offer_open=offer_open,
            error=True,
        )

    def _hide_banner(self) -> None:
        self.banner.hide()
        self.open_button.hide()
        self.settings_button.hide()

    def error_text(self) -> str:
        """The sentence the banner shows, as plain text (tests read it)."""
        return self.banner.text() if self.banner.isVisible() else ""

    # ---- closing ----------------------------------------------------------------------
    def closeEvent(self, event: QCloseEvent) -> None:
        self.settings.window_geometry = self.saveGeometry()
        self.settings.window_splitter = self.splitter.saveState()
        try:
            self.settings.save_params(self.params())
        except Exception:
            log.exception("parameters not saved")
        self.settings.sync()
        self.live_timer.stop()
        self.hide()
        job = self.settings_dialog.job if self.settings_dialog else None
        if job is not None and job.running:  # a download or export must not outlive the app
            job.cancel()
            job.wait()
        self.documents_pane.shut_down()  # indexing stops after its current file
        # Cancel stops generation within one token; a load in progress is waited for.
        if not self.engine_thread.stop():
            log.error("engine thread did not stop in time")
        event.accept()


def _scratch_settings(owner: QWidget) -> AppSettings:
    """A copy of the saved settings in a temporary file that goes with `owner`."""
    saved = AppSettings().qs
    tmp = QTemporaryDir()
    owner._scratch_dir = tmp  # type: ignore[attr-defined]  # removed with the window
    qs = QSettings(tmp.filePath("settings.ini"), QSettings.Format.IniFormat, owner)
    for key in saved.allKeys():
        qs.setValue(key, saved.value(key))
    return AppSettings(qs)


def _as_list(value: object) -> list[str]:
    """A QSettings list as read back from an ini file: None, one string, or a list."""
    if value is None or value == "":
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _model_name(folder: str) -> str:
    p = Path(folder)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
