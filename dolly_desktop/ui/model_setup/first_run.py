"""The first-run panel: with no model installed, the variant this machine can run best, one
button that downloads it (progress and Cancel in the window), and the other ways in."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from dolly_desktop.logs import log_file
from dolly_desktop.models.capacity import available_memory_bytes, format_bytes, free_disk_bytes
from dolly_desktop.models.catalog import Variant
from dolly_desktop.models.choice import recommend
from dolly_desktop.models.store import Store
from dolly_desktop.ui.background import Job
from dolly_desktop.ui.look import style_message
from dolly_desktop.ui.model_setup.settings_dialog import download_progress


class FirstRunPanel(QFrame):
    installed = Signal(str)  # the folder of the model just downloaded
    choose_other = Signal()
    import_folder = Signal()
    use_remote = Signal()
    open_folder = Signal()

    def __init__(self, store: Store, parent: QWidget | None = None) -> None:
        super().__init__(parent, objectName="first_run")
        self.store = store
        self.endpoint: str | None = None  # the Hub; None: HF_ENDPOINT or huggingface.co
        self.job: Job | None = None
        # A frame from the style, not a style sheet: a style sheet pins the colours it was
        # polished with, and the panel would stay dark-on-dark after a switch to a dark scheme.
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.title = QLabel("<h2>Welcome to Dolly Desktop</h2>")
        self.advice = QLabel(wordWrap=True, objectName="first_run_advice")
        self.download_button = QPushButton(objectName="first_run_download")
        self.download_button.setAccessibleDescription("Downloads the recommended model")
        self.progress = QProgressBar(objectName="first_run_progress")
        # One line that never widens the window (a long file name is cut at the edge).
        self.progress_label = QLabel(objectName="first_run_progress_label")
        self.progress_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setAccessibleName("Cancel the download")
        # The progress row keeps its room while hidden: nothing below moves when it appears.
        for w in (self.progress, self.cancel_button, self.progress_label):
            policy = w.sizePolicy()
            policy.setRetainSizeWhenHidden(True)
            w.setSizePolicy(policy)
        self.message = QLabel(wordWrap=True, objectName="first_run_message")
        self.message.setTextFormat(Qt.TextFormat.PlainText)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.message.hide()
        others = QHBoxLayout()
        others.addWidget(QLabel("Or:"))
        for text, signal in (
            ("Choose another model…", self.choose_other),
            ("Import a folder…", self.import_folder),
            ("Use a remote server…", self.use_remote),
            ("Open a model folder…", self.open_folder),
        ):
            b = QPushButton(text)
            b.clicked.connect(signal.emit)
            others.addWidget(b)
        others.addStretch(1)
        row = QHBoxLayout()
        row.addWidget(self.download_button)
        row.addWidget(self.progress, 1)
        row.addWidget(self.cancel_button)
        lay = QVBoxLayout(self)
        lay.addWidget(self.title)
        lay.addWidget(self.advice)
        lay.addLayout(row)
        lay.addWidget(self.progress_label)
        lay.addWidget(self.message)
        lay.addLayout(others)
        self.download_button.clicked.connect(self.download)
        self.cancel_button.clicked.connect(self.cancel)
        self.choice: Variant = recommend(None, 0)
        self._busy(False)

    def advise(self, ram: int | None = None, free_disk: int | None = None) -> Variant:
        """Recommend for this machine (or for the figures given, as tests do)."""
        ram = available_memory_bytes() if ram is None else ram
        disk = free_disk_bytes(self.store.root) if free_disk is None else free_disk
        v = self.choice = recommend(ram, disk)
        here = f"This computer has {format_bytes(disk)} of free disk"
        here += f" and {format_bytes(ram)} of memory available." if ram else "."
        fits = (ram is None or v.run_ram_bytes <= ram) and v.download_bytes < disk
        verdict = (
            "Recommended for this computer" if fits else "The smallest model, which may not fit"
        )
        self.advice.setText(
            f"Dolly runs on your computer, no account and no internet needed once it is "
            f"downloaded. {verdict}: <b>{v.model} {v.precision.value}</b>, a "
            f"{format_bytes(v.download_bytes)} download that needs about "
            f"{format_bytes(v.run_ram_bytes)} of memory to run. {here}"
        )
        self.download_button.setText(f"Download {v.model} {v.precision.value}")
        self.download_button.setAccessibleName(f"Download {v.model} {v.precision.value}")
        return v

    def download(self) -> None:
        v = self.choice
        store, endpoint = self.store, self.endpoint

        def work(emit, cancel):  # type: ignore[no-untyped-def]
            return store.download(
                v.model,
                v.precision.value,
                repo_id=v.repo_id,
                endpoint=endpoint,
                progress=download_progress(emit),
                cancel=cancel,
            )

        job = self.job = Job(f"Downloading {v.model} {v.precision.value}", work, owner=self)
        job.progress.connect(self._show_progress)
        job.done.connect(lambda m: self.installed.emit(str(m.path)))
        job.failed.connect(self._failed)
        job.cancelled.connect(
            lambda: self._say("Download stopped; click Download again to resume.")
        )
        job.ended.connect(lambda: self._busy(False))
        self._say("")
        self._busy(True)
        job.start()

    def cancel(self) -> None:
        if self.job is not None and self.job.running:
            self.job.cancel()
            self.progress_label.setText("Stopping…")

    def _failed(self, message: str) -> None:
        """The reason, what to try (the connection, a Hub mirror) and where the details are."""
        text = f"The download failed: {message}"
        if "HF_ENDPOINT" not in message:
            text += (
                " Check the internet connection; where huggingface.co cannot be reached, set "
                "HF_ENDPOINT to a Hub mirror and start the app again."
            )
        self._say(f"{text} Details are in the log file: {log_file()}", error=True)

    def _say(self, text: str, error: bool = False) -> None:
        self.message.setText(text)
        style_message(self.message, error)
        self.message.setVisible(bool(text))

    def _show_progress(self, text: str, fraction: float) -> None:
        self.progress.setValue(int(fraction * 100))
        self.progress_label.setText(text)

    def _busy(self, busy: bool) -> None:
        self.download_button.setEnabled(not busy)
        for w in (self.progress, self.cancel_button, self.progress_label):
            w.setVisible(busy)
