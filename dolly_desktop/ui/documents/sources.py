"""The numbered sources under an answer: where each passage came from (file, page or
section; a link that opens the file) and the exact text that went into the prompt, from the
history's records, so an old answer shows what it was made of even after its files changed."""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from typing import Any

from PySide6.QtCore import QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import QTextBrowser

from dolly_desktop.ui.documents.pages import open_at_page

PREVIEW_CHARS = 160  # of a collapsed source's text


def where(s: dict[str, Any]) -> str:
    """'pump.md, page 2, section “Impeller”' (documents.index.Hit.anchor, from a record)."""
    text = str(s.get("rel") or os.path.basename(str(s.get("file") or "")))
    if s.get("page") is not None:
        text += f", page {s['page']}"
    if s.get("heading"):
        text += f", section “{s['heading']}”"
    return text


class SourcesView(QTextBrowser):
    """Hidden while there are no sources. `open:N` opens source N's file with the system's
    viewer; `text:N` shows or hides its whole text."""

    notice = Signal(str)  # a source's file cannot be opened: one sentence

    def __init__(self) -> None:
        super().__init__(objectName="sources")
        self.setOpenLinks(False)
        self.setAccessibleName("Sources")
        self.anchorClicked.connect(self._clicked)
        self.records: list[dict[str, Any]] = []
        self.expanded: set[int] = set()
        self.hide()

    def set_sources(self, records: Sequence[dict[str, Any]], note: str = "") -> None:
        self.records = [dict(r) for r in records]
        self.expanded = set()
        self._note = note
        self._render()
        self.setVisible(bool(self.records or note))
        self.verticalScrollBar().setValue(0)  # the first source first, however it was sized

    def showEvent(self, e) -> None:  # shown by the splitter after set_sources: from the top
        super().showEvent(e)
        self.verticalScrollBar().setValue(0)

    def _render(self) -> None:
        parts = []
        if self._note:
            parts.append(f"<p><i>{html.escape(self._note)}</i></p>")
        if self.records:
            parts.append(
                "<p><b>Sources</b> — the passages Dolly was given, in this order (a name "
                "opens its file)</p>"
            )
        for i, s in enumerate(self.records):
            text = str(s.get("text", ""))
            shown = i in self.expanded
            flat = " ".join(text.split())
            if not shown and len(flat) > PREVIEW_CHARS:
                flat = flat[:PREVIEW_CHARS].rsplit(" ", 1)[0] + " …"
            body = html.escape(text) if shown else html.escape(flat)
            toggle = "hide the text" if shown else "show the exact text"
            collection = html.escape(str(s.get("collection", "")))
            parts.append(
                f"<p style='margin-top:6px'><b>[{i + 1}]</b> "
                f"<a href='open:{i}'>{html.escape(where(s))}</a>"
                f" <span style='color:#777'>· {collection} ·</span> "
                f"<a href='text:{i}'>{toggle}</a></p>"
                f"<p style='margin-left:18px; white-space:pre-wrap; color:#555'>{body}</p>"
            )
        self.setHtml("".join(parts))

    def _clicked(self, url: QUrl) -> None:
        kind, _, n = url.toString().partition(":")
        if not n.isdigit() or int(n) >= len(self.records):
            return
        if kind == "open":
            self.open_source(int(n))
        elif kind == "text":
            self.toggle_text(int(n))

    def toggle_text(self, i: int) -> None:
        self.expanded ^= {i}
        bar = self.verticalScrollBar()
        where_ = bar.value()
        self._render()
        bar.setValue(where_)

    def open_source(self, i: int) -> bool:
        """Open source `i`'s file in the system's viewer, a PDF at its page where the viewer
        takes one (the text shown stays what Dolly read, whatever the file holds now)."""
        path = str(self.records[i].get("file") or "")
        if not path or not os.path.isfile(path):
            self.notice.emit(
                f"{where(self.records[i])} is no longer at {path}: the text shown is what "
                "Dolly read."
            )
            return False
        page = self.records[i].get("page")
        if isinstance(page, int) and path.lower().endswith(".pdf") and open_at_page(path, page):
            return True
        if not QDesktopServices.openUrl(QUrl.fromLocalFile(path)):
            self.notice.emit(f"No program here opens {path}.")
            return False
        return True
