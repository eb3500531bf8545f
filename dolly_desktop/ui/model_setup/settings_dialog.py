"""Model settings: get a model onto the machine (download, export, compress, import, remove),
see how far each variant strays from its reference (the stored `models check`, run from here
after an export or compress), and choose the variant and the device it runs on."""

from __future__ import annotations

import html
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from dolly_desktop import paths
from dolly_desktop.compare.check import (
    DEFAULT_MAX_NEW_TOKENS,
    CheckResult,
    choose_reference,
    find_installed,
    run_check,
)
from dolly_desktop.compare.prompts import BUILT_IN
from dolly_desktop.errors import DollyError
from dolly_desktop.generation.devices import list_devices
from dolly_desktop.generation.lookup import LABELS as LOOKUP_LABELS
from dolly_desktop.generation.tuning import calibration
from dolly_desktop.generation.tuning.rule import weight_format
from dolly_desktop.models.capacity import format_bytes
from dolly_desktop.models.checks import CheckRecord, read_check
from dolly_desktop.models.child import compress_job, export_job
from dolly_desktop.models.convert import export_support
from dolly_desktop.models.convert.jobs import ChildJob
from dolly_desktop.models.folder import Precision
from dolly_desktop.models.hub import catalog as hub_catalog
from dolly_desktop.models.hub.download import TransferProgress
from dolly_desktop.models.listing import Listed, list_models
from dolly_desktop.models.store import InstalledModel, Store
from dolly_desktop.ui.background import Job, ProgressFn
from dolly_desktop.ui.look import style_message
from dolly_desktop.ui.settings import AppSettings

log = logging.getLogger(__name__)

HINTS = {"": "Default", "LATENCY": "Latency (one person chatting)", "THROUGHPUT": "Throughput"}
COLUMNS = ["Model", "Variant", "State", "Size", "Agreement (measured)", "RAM needed"]
AGREEMENT_COLUMN = COLUMNS.index("Agreement (measured)")


def check_details(r: CheckRecord) -> str:
    """What the one-line summary leaves out, for a tooltip."""
    parts = (
        "the same greedy answers"
        if r.median_first_divergence is None
        else f"greedy answers part at token {r.median_first_divergence:g} (median)"
    )
    return (
        f"Against {r.reference}, teacher-forced over its greedy answers: top-1 {r.top1:.1%}, "
        f"mean KL {r.mean_kl:.4f} per token, {parts}. {r.prompts} prompts ({r.prompt_set}), "
        f"up to {r.max_new_tokens} tokens each, on {r.cpu}, {r.date[:16].replace('T', ' ')}."
    )


def download_progress(emit: ProgressFn) -> Callable[[TransferProgress], None]:
    """A download's progress as a line for a progress label."""

    def on(p: TransferProgress) -> None:
        eta = f", {p.eta_s:.0f} s left" if p.eta_s is not None else ""
        done, total = format_bytes(p.done_bytes), format_bytes(p.total_bytes)
        speed = format_bytes(p.speed_bps)
        emit(f"{p.stage} {p.file}: {done} of {total} at {speed}/s{eta}", p.fraction)

    return on


ORIGINAL_BUTTON = "Export from a folder…"  # the Download button, for "export from the original"


class SettingsDialog(QDialog):
    model_chosen = Signal(str, str)  # folder, device
    remote_chosen = Signal(str, str)  # url, api key
    device_chosen = Signal(str)

    def __init__(
        self, parent: QWidget | None, settings: AppSettings, store: Store | None = None
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Model settings")
        self.settings = settings
        self.store = store or Store()
        self.store.cleanup()  # staging left by a job that was killed
        self.job: Job | None = None
        self.check_tokens = DEFAULT_MAX_NEW_TOKENS  # of the reference's answer, per prompt
        self.offered: tuple[InstalledModel, InstalledModel] | None = None  # check: target, ref
        self.rows: list[Listed] = []
        self.current_folder: str | None = None  # the window says what it has loaded
        self.mix = calibration.DEFAULT_MIX  # the person's prompt and answer lengths (window)
        self._loading = ""  # the model "Use this model" asked for, until the window answers
        self.endpoint: str | None = None  # the Hub; None: HF_ENDPOINT or huggingface.co
        tabs = self.tabs = QTabWidget()
        tabs.setAccessibleName("Model settings")
        tabs.addTab(self._models_page(), "Models")
        tabs.addTab(self._inference_page(), "Inference")
        self.table.setAccessibleName("Models: installed and available")
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.close)
        lay = QVBoxLayout(self)
        lay.addWidget(tabs)
        lay.addWidget(buttons)
        self.resize(860, 520)
        self.refresh()

    # ---- pages ------------------------------------------------------------------------
    def _models_page(self) -> QWidget:
        page = QWidget()
        self.table = QTableWidget(0, len(COLUMNS), objectName="models_table")
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(AGREEMENT_COLUMN, QHeaderView.ResizeMode.Stretch)
        self.detail = QLabel(wordWrap=True, objectName="variant_detail")
        self.detail.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.use_button = QPushButton("Use this model")
        self.download_button = QPushButton("Download")
        self.export_button = QPushButton("Export…")
        self.compress_button = QPushButton("Compress…")
        self.import_button = QPushButton("Import folder…")
        self.remove_button = QPushButton("Remove")
        self.check_button = QPushButton("Check agreement", objectName="check_button")
        self.check_button.setToolTip(
            f"How far this variant strays from its reference (FP16 if installed): "
            f"{len(BUILT_IN)} instructions, one model in memory at a time; the result is kept."
        )
        self.precision = QComboBox(objectName="target_precision")
        for p in (Precision.INT4, Precision.INT8, Precision.FP16):
            self.precision.addItem(p.value)
        row = QHBoxLayout()
        for b in (self.use_button, self.download_button, self.remove_button, self.check_button):
            row.addWidget(b)
        row.addStretch(1)
        row.addWidget(QLabel("Target precision"))
        row.addWidget(self.precision)
        for b in (self.export_button, self.compress_button, self.import_button):
            row.addWidget(b)
        self.progress = QProgressBar(objectName="job_progress")
        self.progress_label = QLabel()
        self.cancel_button = QPushButton("Cancel")
        job_row = QHBoxLayout()
        job_row.addWidget(self.progress_label, 1)
        job_row.addWidget(self.progress, 2)
        job_row.addWidget(self.cancel_button)
        self.message = QLabel(wordWrap=True, objectName="models_message")
        self.offer_button = QPushButton("Check it now", objectName="offer_check")
        message_row = QHBoxLayout()
        message_row.addWidget(self.message, 1)
        message_row.addWidget(self.offer_button)
        self.offer_button.hide()
        lay = QVBoxLayout(page)
        lay.addWidget(self.table, 1)
        lay.addWidget(self.detail)
        lay.addLayout(row)
        lay.addLayout(job_row)
        lay.addLayout(message_row)
        self._show_job(None)
        self.table.itemSelectionChanged.connect(self._sync_buttons)
        self.table.doubleClicked.connect(lambda _i: self.use_selected())
        self.use_button.clicked.connect(self.use_selected)
        self.download_button.clicked.connect(self.download_selected)
        self.export_button.clicked.connect(lambda: self.export_checkpoint())
        self.compress_button.clicked.connect(self.compress_selected)
        self.import_button.clicked.connect(lambda: self.import_folder())
        self.remove_button.clicked.connect(lambda: self.remove_selected())
        self.check_button.clicked.connect(self.check_selected)
        self.offer_button.clicked.connect(self._take_offer)
        self.cancel_button.clicked.connect(self.cancel_job)
        return page

    def _inference_page(self) -> QWidget:
        page = QWidget()
        # Two groups, each with its title: a bold line alone above the remote fields read as
        # a button ("Remote server…").
        local = QGroupBox("On this computer", objectName="local_group")
        form = QFormLayout(local)
        self.device = QComboBox(objectName="settings_device")
        for d in list_devices():
            self.device.addItem(d.label(), d.id)
        i = self.device.findData(self.settings.device)
        self.device.setCurrentIndex(max(i, 0))
        self.hint = QComboBox(objectName="perf_hint")
        for key, label in HINTS.items():
            self.hint.addItem(label, key)
        self.hint.setCurrentIndex(max(self.hint.findData(self.settings.performance_hint), 0))
        self.lookup = QComboBox(objectName="prompt_lookup")
        self.lookup.setToolTip(
            "Guesses the next words from the prompt and checks them in one step: the same "
            "answer, sooner when it quotes a passage, slower when it does not. Auto uses it for "
            "prompts with a passage while their answers copy enough to gain (a second copy of "
            "the model in memory, if there is room)."
        )
        for mode, label in LOOKUP_LABELS.items():
            self.lookup.addItem(label, mode.value)
        self.lookup.setCurrentIndex(max(self.lookup.findData(self.settings.lookup_mode().value), 0))
        self.cache = QLineEdit(objectName="cache_dir")
        self.cache.setText(self.settings.cache_dir)
        self.cache.setPlaceholderText(str(paths.compiled_cache_dir()))
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse_cache)
        cache_row = QHBoxLayout()
        cache_row.addWidget(self.cache, 1)
        cache_row.addWidget(browse)
        form.addRow("Device", self.device)
        form.addRow("Performance hint", self.hint)
        form.addRow("Prompt lookup", self.lookup)
        form.addRow("Compiled-model cache", cache_row)
        # Calibration (generation/tuning/): what this machine's measurements chose, and a way
        # to measure again or to keep the built-in rule.
        self.calibrate = QCheckBox("Tune to this CPU while idle", objectName="calibrate")
        self.calibrate.setChecked(bool(self.settings.calibrate))
        self.calibrate.setToolTip(
            "Once per model on this computer, while the app sits idle, measures a few CPU "
            "settings and keeps the fastest for the lengths of your own prompts and answers. "
            "A request stops it at once. Off: the built-in settings."
        )
        self.measure_again = QPushButton("Measure again", objectName="measure_again")
        self.measure_again.clicked.connect(self._measure_again)
        calibrate_row = QHBoxLayout()
        calibrate_row.addWidget(self.calibrate, 1)
        calibrate_row.addWidget(self.measure_again)
        self.calibration = QLabel(objectName="calibration_summary", wordWrap=True)
        self.calibration.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        form.addRow("CPU calibration", calibrate_row)
        form.addRow(self.calibration)
        note = QLabel(
            "Changing the device, the hint or prompt lookup reloads the model: OpenVINO "
            "compiles it again for the new settings. The cache keeps what was compiled, so the "
            "second load of a model is fast.",
            objectName="inference_note",
        )
        note.setWordWrap(True)
        form.addRow(note)
        # Remote server: a choice beside the local devices.
        self.remote_url = QLineEdit(objectName="remote_url")
        self.remote_url.setPlaceholderText("http://HOST:8000/v1 (dolly-desktop serve) or .../v3")
        self.remote_url.setText(self.settings.remote_url)
        self.remote_key = QLineEdit(objectName="remote_key")
        self.remote_key.setEchoMode(QLineEdit.EchoMode.Password)
        self.remote_key.setPlaceholderText("optional API key")
        self.remote_key.setText(self.settings.remote_key)
        self.test_button = QPushButton("Test")
        self.use_remote_button = QPushButton("Use remote server")
        self.remote_status = QLabel(wordWrap=True, objectName="remote_status")
        remote_row = QHBoxLayout()
        remote_row.addWidget(self.remote_key, 1)
        remote_row.addWidget(self.test_button)
        remote_row.addWidget(self.use_remote_button)
        remote = QGroupBox("Remote server", objectName="remote_group")
        rform = QFormLayout(remote)
        rform.addRow("URL", self.remote_url)
        rform.addRow("API key", remote_row)
        rform.addRow(self.remote_status)
        lay = QVBoxLayout(page)
        lay.addWidget(local)
        lay.addWidget(remote)
        lay.addStretch(1)
        self.test_button.clicked.connect(self.test_remote)
        self.use_remote_button.clicked.connect(self.use_remote)
        self.device.activated.connect(lambda _i: self._inference_changed())
        self.hint.activated.connect(lambda _i: self._inference_changed())
        self.lookup.activated.connect(lambda _i: self._inference_changed())
        self.calibrate.toggled.connect(lambda _on: self._inference_changed())
        self.cache.editingFinished.connect(self._inference_changed)
        return page

    def refresh_hub(self) -> None:
        """Ask the Hub for its dolly-v2 repos in the background; the table shows them when
        they come. Offline, the last list (or the built-in one) stays."""
        endpoint = self.endpoint

        def work(_progress: ProgressFn, _cancel: threading.Event) -> bool:
            try:
                hub_catalog.refresh(endpoint)
            except Exception as e:  # offline, or the Hub did not answer: not the person's problem
                log.info("hub catalog not refreshed: %s", e)
                return False
            return True

        job = self._hub_job = Job("Hub catalog", work, owner=self)
        job.done.connect(lambda fresh: fresh and self.refresh())
        job.start()

    def show_remote(self) -> None:
        """The Inference page, where a remote server is chosen."""
        self.tabs.setCurrentIndex(1)
        self.show()
        self.remote_url.setFocus()

    def test_remote(self) -> None:
        from dolly_desktop.generation.engines.remote import RemoteEngine

        url, key = self.remote_url.text().strip(), self.remote_key.text().strip()
        self.remote_status.setText(f"Asking {url}…")
        self._tester = Job(
            "Test", lambda _emit, _cancel: RemoteEngine.test(url, key or None), owner=self
        )
        self._tester.done.connect(self.remote_status.setText)
        self._tester.failed.connect(self.remote_status.setText)
        self._tester.start()

    def use_remote(self) -> None:
        url, key = self.remote_url.text().strip(), self.remote_key.text().strip()
        if not url:
            self.remote_status.setText("Type the server's URL first.")
            return
        self.settings.remote_key = key
        self.remote_chosen.emit(url, key)
        self.remote_status.setText(f"Connecting to {url}…")

    def _browse_cache(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Compiled-model cache folder")
        if folder:
            self.cache.setText(folder)
            self._inference_changed()

    def _inference_changed(self) -> None:
        self.settings.device = self.device.currentData()
        self.settings.performance_hint = self.hint.currentData()
        self.settings.prompt_lookup = self.lookup.currentData()
        self.settings.cache_dir = self.cache.text().strip()
        self.settings.calibrate = self.calibrate.isChecked()
        self.refresh_calibration()
        self.device_chosen.emit(self.device.currentData())

    def _local_model(self) -> Path | None:
        folder = self.current_folder
        return Path(folder) if folder and Path(folder).is_dir() else None

    def refresh_calibration(self) -> None:
        """What calibration chose for the loaded model on this machine, with its figures, for
        the person's mix (`mix`, which the window reads from history)."""
        model = self._local_model()
        if model is None:
            self.calibration.setText("Calibration applies to a model on this computer.")
        elif not self.calibrate.isChecked():
            self.calibration.setText("Off: the built-in CPU settings are used.")
        else:
            self.calibration.setText(_calibration_html(calibration.stored(model), self.mix))
        self.measure_again.setEnabled(model is not None and self.calibrate.isChecked())

    def _measure_again(self) -> None:
        """Forget what was measured for this model's weights on this machine and reload: the
        engine measures again at the next idle time."""
        model = self._local_model()
        if model is None:
            return
        calibration.forget(calibration.machine_key(weight_format(model)))
        self.refresh_calibration()
        self.device_chosen.emit(self.device.currentData())

    # ---- the table --------------------------------------------------------------------
    def refresh(self) -> None:
        self.refresh_calibration()
        self.rows = list_models(self.store)
        self.table.setRowCount(len(self.rows))
        for r, row in enumerate(self.rows):
            check = read_check(row.installed.path) if row.installed else None
            cells = [
                row.name,
                row.variant,
                row.state(in_use=self.current_folder),
                row.size_text(),
                check.summary() if check else "",
                row.ram_text(),
            ]
            for c, text in enumerate(cells):
                self.table.setItem(r, c, QTableWidgetItem(text))
            if check:
                self.table.item(r, AGREEMENT_COLUMN).setToolTip(check_details(check))
        self._sync_buttons()

    def selected_row(self) -> Listed | None:
        rows = self.table.selectionModel().selectedRows()
        return self.rows[rows[0].row()] if rows else None

    def select(self, name: str, variant: str) -> None:
        for i, row in enumerate(self.rows):
            if (row.name, row.variant) == (name, variant):
                self.table.selectRow(i)
                return

    def _sync_buttons(self) -> None:
        row = self.selected_row()
        busy = self.job is not None and self.job.running
        m = row.installed if row else None
        self.use_button.setEnabled(bool(m and m.runnable))
        # A variant with no ready-made repo is exported from the original checkpoint: the
        # same button asks for that folder on disk instead of downloading.
        original = bool(row and not m and not row.repo_id)
        self.download_button.setText(ORIGINAL_BUTTON if original else "Download")
        self.download_button.setToolTip(
            f"Export {row.name} {row.variant} from its Hugging Face checkpoint "
            f"(databricks/{row.name}), a folder already on this computer"
            if original and row
            else ""
        )
        self.download_button.setEnabled(
            bool(row and not m and (row.repo_id or original)) and not busy
        )
        self.remove_button.setEnabled(bool(m) and not busy)
        fp16 = bool(m and m.runnable and m.variant == Precision.FP16.value)
        self.compress_button.setEnabled(fp16 and not busy)
        self.export_button.setEnabled(not busy)
        self.import_button.setEnabled(not busy)
        self.check_button.setEnabled(bool(m and m.runnable and self._reference(m)) and not busy)
        self.offer_button.setEnabled(not busy)
        self.detail.setText(self._detail(row))

    def _reference(self, m: InstalledModel) -> InstalledModel | None:
        """What `models check` measures `m` against; None when nothing is above it."""
        try:
            return choose_reference(self.store, m, None)
        except DollyError:
            return None

    def _detail(self, row: Listed | None) -> str:
        """The selected variant: its size and compression rate, and its stored check."""
        if row is None or row.installed is None:
            return ""
        head = f"{row.label}: {row.size_text()}."
        check = read_check(row.installed.path)
        if check is not None:
            return f"{head} {check.summary()}."
        ref = self._reference(row.installed) if row.installed.runnable else None
        if ref is None:
            return head
        return f"{head} Not checked yet against {ref.variant}: Check agreement measures it."

    # ---- actions ----------------------------------------------------------------------
    def use_selected(self) -> None:
        row = self.selected_row()
        if row and row.installed and row.installed.runnable:
            self._loading = f"{row.name} {row.variant}"
            self._say(f"Loading {self._loading}…")
            self.model_chosen.emit(str(row.installed.path), self.device.currentData())
            self.refresh()

    def model_loaded(self, folder: str) -> None:
        """The window has loaded `folder`: the table says so, and "Loading …" goes."""
        self.current_folder = folder
        self.refresh()
        if self._loading:
            self._say(f"{self._loading} is loaded and in use.")
            self._loading = ""

    def model_failed(self, message: str) -> None:
        """The load asked for here failed: said here too, not only in the window."""
        if self._loading:
            self._say(f"{self._loading} could not be loaded. {message}", error=True)
            self._loading = ""

    def download_selected(self) -> None:
        row = self.selected_row()
        if row and not row.installed and not row.repo_id:
            self.export_original(row)
            return
        if not row or not row.repo_id:
            return

        self._run(
            f"Downloading {row.name} {row.variant}",
            lambda emit, cancel: self.store.download(
                row.name,
                row.variant,
                repo_id=row.repo_id,
                endpoint=self.endpoint,
                progress=download_progress(emit),
                cancel=cancel,
            ),
        )

    def export_checkpoint(
        self, src: str | None = None, precision: Precision | None = None, name: str | None = None
    ) -> None:
        """Export the checkpoint folder `src` (asked for when None) to `precision` (the
        target precision when None), into the store as `name` (the folder's when None)."""
        if not export_support.available():  # once it is installed, this export goes on
            self.offer_export_support(then=lambda: self.export_checkpoint(src, precision, name))
            return
        if src is None:
            src = QFileDialog.getExistingDirectory(
                self, "A Hugging Face checkpoint folder to export (config.json and its weights)"
            )
            if not src:
                return
        precision = precision or Precision(self.precision.currentText())
        named = {"name": name} if name else {}
        try:
            child = export_job(self.store, Path(src), precision, **named)
        except DollyError as e:
            self._say(str(e), error=True)
            return
        self._run_child(f"Exporting {name or Path(src).name} to {precision.value}", child)

    def export_original(self, row: Listed, src: str | None = None) -> None:
        """A catalog variant with no ready-made download: export (and for INT8/INT4,
        compress) it from the Hugging Face checkpoint folder the person has on disk."""
        if src is None:
            src = QFileDialog.getExistingDirectory(
                self, f"The {row.name} checkpoint from Hugging Face (databricks/{row.name})"
            )
            if not src:
                return
        try:
            kind = self.store.plan_import(Path(src), row.name).kind
        except DollyError as e:
            self._say(str(e), error=True)
            return
        if kind != "checkpoint":
            self._say(
                f"{src} holds an OpenVINO model, not a checkpoint to export: add it with "
                "Import folder….",
                error=True,
            )
            return
        self.export_checkpoint(src, Precision(row.variant), row.name)

    def offer_export_support(self, then: Callable[[], None] | None = None) -> None:
        """Export needs torch and optimum-intel, which the app does not install up front.
        `then` (the export that asked) starts by itself once the install has succeeded."""
        if export_support.pip_command() is None:  # a bundle: no pip to install with
            self._say(export_support.how_to_install(), error=True)
            return
        size = format_bytes(export_support.APPROX_BYTES)
        answer = QMessageBox.question(
            self,
            "Install export support",
            f"Exporting a PyTorch checkpoint needs torch and optimum-intel (about {size}), which "
            "are not installed yet. Install export support now?",
        )
        if answer != QMessageBox.StandardButton.Yes:
            self._say(export_support.how_to_install())
            return
        self._run(f"Installing export support (about {size})", export_support.install, then=then)

    def compress_selected(self) -> None:
        row = self.selected_row()
        if not row or not row.installed:
            return
        precision = Precision(self.precision.currentText())
        if precision is Precision.FP16:
            self._say("Choose INT8 or INT4 as the target precision to compress to.")
            return
        try:
            child = compress_job(self.store, row.name, precision)
        except DollyError as e:
            self._say(str(e), error=True)
            return
        self._run_child(f"Compressing {row.name} to {precision.value}", child)

    def import_folder(self, src: str | None = None) -> None:
        if src is None:
            src = QFileDialog.getExistingDirectory(self, "A model folder to import")
            if not src:
                return
        plan = self.store.plan_import(Path(src))
        if plan.kind == "checkpoint":
            self.export_checkpoint(src)
            return
        self._run(
            f"Importing {Path(src).name}",
            lambda emit, cancel: self.store.import_folder(Path(src), progress=emit, cancel=cancel),
        )

    def remove_selected(self, confirm: bool = True) -> None:
        row = self.selected_row()
        if not row or not row.installed:
            return
        if (
            confirm
            and QMessageBox.question(
                self, "Remove", f"Delete {row.name} {row.variant} from this computer?"
            )
            != QMessageBox.StandardButton.Yes
        ):
            return
        self.store.remove(row.name, row.variant)
        self.refresh()

    # ---- jobs -------------------------------------------------------------------------
    def _run(
        self,
        title: str,
        fn,
        on_cancel=None,
        then: Callable[[], None] | None = None,
        cancelled: str = "cancelled; nothing was installed.",
    ) -> None:
        """Run `fn` as the dialog's job; `then` follows a success, once the job has ended."""
        self._withdraw_offer()
        job = Job(title, fn, on_cancel, owner=self)
        self.job = job
        succeeded: list[bool] = []
        job.progress.connect(lambda stage, frac: self._show_job(job, stage, frac))
        job.done.connect(lambda _r: succeeded.append(True))
        job.done.connect(lambda _r: self._say(f"{title}: done."))
        job.failed.connect(lambda msg: self._say(f"{title} failed: {msg}", error=True))
        job.cancelled.connect(lambda: self._say(f"{title}: {cancelled}"))
        job.ended.connect(self._job_ended)
        if then is not None:
            job.ended.connect(lambda: succeeded and then())
        self._show_job(job, "starting", 0.0)
        self._say("")
        job.start()
        self._sync_buttons()

    def _run_child(self, title: str, child: ChildJob) -> None:
        """A child job, made here on the GUI thread, so that a Cancel that comes before it
        has started still reaches it (it then never starts)."""

        def work(emit: ProgressFn, _cancel: threading.Event) -> Path:
            child.progress = emit
            return child.run()

        made: list[Path] = []
        self._run(title, work, on_cancel=child.cancel, then=lambda: self._offer_check(made[0]))
        self.job.done.connect(lambda path: made.append(Path(path)))

    # ---- the agreement check ------------------------------------------------------------
    def _offer_check(self, folder: Path) -> None:
        """After an export or compress: offer to measure the new variant against its
        reference, when it has one (an FP16 export has none above it)."""
        try:
            target = find_installed(self.store, f"{folder.parent.name}/{folder.name}")
        except DollyError:
            return
        ref = self._reference(target)
        if ref is None:
            return
        self.select(target.name, target.variant)
        self.offered = (target, ref)
        self._say(
            f"{self.message.text()} How close is {target.variant} to {ref.variant}? The check "
            f"answers {len(BUILT_IN)} instructions with both, one model in memory at a time."
        )
        self.offer_button.setText(f"Check {target.variant} against {ref.variant}")
        self.offer_button.show()

    def _withdraw_offer(self) -> None:
        self.offered = None
        self.offer_button.hide()

    def _take_offer(self) -> None:
        if self.offered is not None:
            self.check(*self.offered)

    def check_selected(self) -> None:
        row = self.selected_row()
        m = row.installed if row else None
        ref = self._reference(m) if m and m.runnable else None
        if m is not None and ref is not None:
            self.check(m, ref)

    def check(self, target: InstalledModel, reference: InstalledModel) -> None:
        """Run `models check` on `target` against `reference` as the dialog's job (progress,
        Cancel); the result is stored beside the variant and shown in the table."""
        store, prompts, tokens = self.store, list(BUILT_IN), self.check_tokens

        def work(emit: ProgressFn, cancel: threading.Event) -> CheckResult:
            def progress(phase: str, done: int, total: int) -> None:
                second = phase != "reference"
                who = target.variant if second else f"{reference.variant} (the reference)"
                shown = min(done + 1, total)
                emit(f"{who}, prompt {shown} of {total}", (done + total * second) / (2 * total))

            return run_check(store, target, reference, prompts, "built-in", tokens,
                             progress, cancel)  # fmt: skip

        title = f"Checking {target.label} against {reference.variant}"
        self._run(title, work, cancelled="cancelled; nothing was stored.")
        self.job.done.connect(
            lambda r: self._say(f"{r.record.summary()} (in {r.record.seconds:.0f} s).")
        )

    def _job_ended(self) -> None:
        self._show_job(None)
        self.refresh()

    def cancel_job(self) -> None:
        if self.job is not None and self.job.running:
            self.job.cancel()
            self.progress_label.setText(f"{self.job.title}: cancelling…")

    def _show_job(self, job: Job | None, stage: str = "", frac: float = 0.0) -> None:
        visible = job is not None
        for w in (self.progress, self.progress_label, self.cancel_button):
            w.setVisible(visible)
        if job is not None:
            self.progress.setValue(int(frac * 100))
            self.progress_label.setText(f"{job.title}: {stage}")

    def _say(self, text: str, error: bool = False) -> None:
        if error:
            style_message(self.message, True)
        else:
            self.message.setProperty("error", False)
            self.message.setStyleSheet("")
        self.message.setText(text)

    def closeEvent(self, event: QCloseEvent) -> None:
        if self.job is not None and self.job.running:
            box = QMessageBox(self)
            box.setWindowTitle("A job is running")
            box.setText(f"{self.job.title} is still running.")
            stop = box.addButton("Cancel it", QMessageBox.ButtonRole.DestructiveRole)
            box.addButton("Keep going in the background", QMessageBox.ButtonRole.AcceptRole)
            box.exec()
            if box.clickedButton() is stop:
                self.cancel_job()
        event.accept()  # hidden, not destroyed: a job keeps its dialog to report to


def _calibration_html(cal: calibration.Calibration | None, mix: calibration.Mix) -> str:
    """The stored calibration as a sentence and a table (calibration.describe's text, laid
    out for a label: its plain-text columns wrap in a proportional font)."""
    if cal is None:
        return html.escape(calibration.describe(None))
    head, *rows = calibration.table(cal, mix)
    cells = "".join(f"<th align='left'>{html.escape(c)}</th>" for c in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows
    )
    return (
        f"<p>{html.escape(calibration.sentence(cal, mix))}</p>"
        f"<table cellspacing='0' cellpadding='3'><tr>{cells}</tr>{body}</table>"
    )
