"""A PDF source opens at its page in the system's PDF viewer (issue 24): the default program
found the way a Linux desktop finds it (xdg-mime, then its .desktop file), started as a real
child process. The viewers here are stand-in scripts that write down how they were started."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from PySide6.QtCore import QUrl
from PySide6.QtGui import QDesktopServices

from dolly_desktop.ui.documents import pages
from dolly_desktop.ui.documents.sources import SourcesView

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the xdg-mime lookup is Linux's"
)


@pytest.fixture
def desktop(tmp_path, monkeypatch):
    """A PATH with a stand-in xdg-mime and viewers; `use(desktop_id, exec_line)` makes one
    the default for PDFs (its .desktop file at `file` under applications/). Each viewer
    appends its arguments to `log`."""
    bin_dir, data = tmp_path / "bin", tmp_path / "share"
    bin_dir.mkdir()
    log = tmp_path / "started.txt"
    default = tmp_path / "default.txt"
    script = bin_dir / "xdg-mime"
    script.write_text(f'#!/bin/sh\n[ "$3" = application/pdf ] && cat "{default}"\n')
    for name in ("evince", "okular", "pdfthing"):
        viewer = bin_dir / name
        viewer.write_text(f'#!/bin/sh\nprintf "%s\\n" "$(basename "$0")" "$@" >> "{log}"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("XDG_DATA_HOME", str(data))
    monkeypatch.setenv("XDG_DATA_DIRS", str(tmp_path / "none"))

    def use(desktop_id: str, exec_line: str, file: str | None = None) -> None:
        entry = data / "applications" / (file or desktop_id)
        entry.parent.mkdir(parents=True, exist_ok=True)
        entry.write_text(f"[Desktop Entry]\nName=Viewer\nExec={exec_line}\n[Other]\nExec=no\n")
        default.write_text(desktop_id + "\n")

    return use, log


def started(log: Path, lines: int = 3) -> list[str]:
    """What the viewer wrote, once it has written `lines` lines (or 20 s passed)."""
    deadline = time.monotonic() + 20
    got: list[str] = []
    while len(got) < lines and time.monotonic() < deadline:
        time.sleep(0.05)
        got = log.read_text().splitlines() if log.exists() else []
    return got


def test_the_default_viewer_is_started_at_the_page(tmp_path, desktop):
    use, log = desktop
    pdf = str(tmp_path / "manual.pdf")
    use("org.gnome.Evince.desktop", "evince %U")
    assert pages.open_at_page(pdf, 3)
    assert started(log) == ["evince", "--page-index=3", pdf]
    log.unlink()
    # An id whose dash stands for a subfolder; an env prefix before the program.
    use("kde4-okular.desktop", "env QT_X=1 okular %U", file="kde4/okular.desktop")
    assert pages.open_at_page(pdf, 12)
    assert started(log, 4) == ["okular", "--page", "12", pdf]


def test_a_viewer_that_takes_no_page_is_left_to_the_caller(tmp_path, desktop):
    use, log = desktop
    use("pdfthing.desktop", "pdfthing %f")
    assert pages.page_command(str(tmp_path / "a.pdf"), 2) is None
    assert not pages.open_at_page(str(tmp_path / "a.pdf"), 2)
    use("gone.desktop", "no-such-viewer %f")
    assert not pages.open_at_page(str(tmp_path / "a.pdf"), 2)
    time.sleep(0.3)
    assert not log.exists()  # nothing was started


def test_a_pdf_source_opens_at_its_page_and_others_as_files(qtbot, tmp_path, desktop, monkeypatch):
    use, log = desktop
    use("org.gnome.Evince.desktop", "evince %U")
    pdf, md = tmp_path / "manual.pdf", tmp_path / "pump.md"
    pdf.write_bytes(b"%PDF-1.4\n")
    md.write_text("# Pump\n")
    opened: list[QUrl] = []  # the OS boundary for plain files
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url) or True)
    view = SourcesView()
    qtbot.addWidget(view)
    view.set_sources(
        [
            {"file": str(pdf), "rel": "manual.pdf", "page": 2, "text": "Page two."},
            {"file": str(md), "rel": "pump.md", "page": None, "text": "Pump."},
        ]
    )
    view.anchorClicked.emit(QUrl("open:0"))
    assert started(log) == ["evince", "--page-index=2", str(pdf)] and opened == []
    view.anchorClicked.emit(QUrl("open:1"))
    assert opened == [QUrl.fromLocalFile(str(md))]
    use("pdfthing.desktop", "pdfthing %f")  # takes no page: the file, as before
    view.anchorClicked.emit(QUrl("open:0"))
    assert opened[-1] == QUrl.fromLocalFile(str(pdf))
