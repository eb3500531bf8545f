"""A file's bytes -> its text as blocks, each with its page and nearest heading; or `Skipped`
with the reason, in one sentence a person can act on.

Supported: .txt, .md/.markdown (ATX and setext headings), .html/.htm (text only: scripts,
styles and the like dropped; h1-h6 are headings), .pdf (pypdf, one block per page).
"""

from __future__ import annotations

import io
import logging
import os
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

log = logging.getLogger(__name__)
logging.getLogger("pypdf").setLevel(logging.ERROR)  # a damaged PDF is one skip line, not 50

KINDS = {
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
}
MAX_FILE_BYTES = 64 * 2**20  # larger files are skipped: a person's notes are far smaller
BINARY_PROBE = 8192  # a NUL byte in this many first bytes: a binary file


class Skipped(Exception):
    """A file that is not indexed; str(e) is the reason."""


@dataclass(frozen=True)
class Block:
    text: str
    page: int | None = None  # 1-based, PDFs only
    heading: str = ""  # the heading this text sits under, if any


def kind_of(path: str | Path) -> str | None:
    """The parser for a file name, or None for a type that is not supported."""
    return KINDS.get(os.path.splitext(path)[1].lower())  # not Path(): 10,000 calls a poll


def parse(data: bytes, kind: str) -> list[Block]:
    """Blocks of text of a file's bytes; raises Skipped when there is nothing to index."""
    if kind == "pdf":
        blocks = _pdf(data)
    else:
        if b"\0" in data[:BINARY_PROBE]:
            raise Skipped("binary file")
        if kind == "html":
            blocks = _html(_decode(data, fallback="cp1252"))
        elif kind == "markdown":
            blocks = _markdown(_decode(data))
        else:
            blocks = [Block(_decode(data))]
    blocks = [b for b in blocks if b.text.strip()]
    if not blocks:
        raise Skipped("no text (a scanned PDF?)" if kind == "pdf" else "no text")
    return blocks


def _decode(data: bytes, fallback: str | None = None) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        if fallback is None:
            raise Skipped("not UTF-8 text") from None
        return data.decode(fallback, errors="replace")


_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")


# A line that may be a heading, an underline or a fence: the only lines _markdown looks at.
_CANDIDATE = re.compile(r"^ {0,3}[#=`~-]", re.MULTILINE)


def _markdown(text: str) -> list[Block]:
    """One block per section: a heading starts a new one (not inside a fenced code block).

    Only the lines _CANDIDATE finds are looked at in Python; the runs between them are sliced
    whole (a loop over every line was a sixth of indexing Markdown)."""
    lines = text.splitlines()
    joined = "\n".join(lines)  # lines as splitlines sees them, for the regex
    blocks: list[Block] = []
    heading = ""
    head: list[str] = []  # the section's title line, if it has one
    first = 0  # ... then lines[first:] up to the line being looked at
    fenced = False
    i = pos = 0
    for found in _CANDIDATE.finditer(joined):
        i += joined.count("\n", pos, found.start())
        pos = found.start()
        line = lines[i]
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        m = _ATX.match(line)
        previous = lines[i - 1] if i > first else (head[-1] if head else "")
        if not (m or (_SETEXT.match(line) and previous.strip())):
            continue
        body = head + lines[first:i]
        if not m:
            body.pop()  # the underlined line is the title
        if body:
            blocks.append(Block("\n".join(body), heading=heading))
        heading = m.group(2).strip() if m else previous.strip()
        head, first = [heading], i + 1
    body = head + lines[first:]
    if body:
        blocks.append(Block("\n".join(body), heading=heading))
    return blocks


_SKIP_TAGS = {"script", "style", "noscript", "template", "svg", "head", "iframe", "object"}
_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
_BREAKS = {
    "p", "div", "br", "li", "tr", "td", "th", "section", "article", "pre", "blockquote",
    "header", "footer", "table", "ul", "ol", "dl", "dt", "dd", "hr", "main", "nav", "aside",
}  # fmt: skip


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self.parts: list[str] = []
        self.heading = ""
        self.title: list[str] = []
        self.in_heading: list[str] | None = None
        self.in_title = False
        self.skipping = 0  # depth inside script/style/...

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "title":
            self.in_title = True
        elif tag in _SKIP_TAGS:
            self.skipping += 1
        elif tag in _HEADINGS and not self.skipping:
            self.flush_block()
            self.in_heading = []
        elif tag in _BREAKS:
            self.parts.append("\n")

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        if tag in _BREAKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
            if not self.heading:
                self.heading = _squash("".join(self.title))
        elif tag in _SKIP_TAGS:
            self.skipping = max(0, self.skipping - 1)
        elif tag in _HEADINGS and self.in_heading is not None:
            self.heading = _squash("".join(self.in_heading))
            self.in_heading = None
            self.parts.append(self.heading + "\n")
        elif tag in _BREAKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title.append(data)
        elif self.skipping:
            return
        elif self.in_heading is not None:
            self.in_heading.append(data)
        else:
            self.parts.append(data)

    def flush_block(self) -> None:
        text = _tidy("".join(self.parts))
        if text:
            self.blocks.append(Block(text, heading=self.heading))
        self.parts = []


def _squash(s: str) -> str:
    return " ".join(s.split())


def _tidy(s: str) -> str:
    s = re.sub(r"[^\S\n]+", " ", s)
    s = re.sub(r" ?\n[\s]*\n\s*", "\n\n", s)
    return re.sub(r" ?\n ?", "\n", s).strip()


def _html(text: str) -> list[Block]:
    p = _Text()
    try:
        p.feed(text)
        p.close()
        p.flush_block()
    except Exception as e:  # html.parser is lenient; anything left is a broken file
        raise Skipped(f"damaged HTML: {e}") from None
    return p.blocks


def _pdf(data: bytes) -> list[Block]:
    import pypdf
    from pypdf.errors import DependencyError, PdfReadError

    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                ok = reader.decrypt("")  # many PDFs are encrypted with an empty password
            except (DependencyError, NotImplementedError, PdfReadError):
                ok = 0
            if not ok:
                raise Skipped("encrypted PDF (it needs a password)")
        blocks = []
        for i, page in enumerate(reader.pages, start=1):
            blocks.append(Block(_tidy(page.extract_text() or ""), page=i))
        return blocks
    except Skipped:
        raise
    except Exception as e:  # pypdf raises many kinds on damaged files; each is one skip
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise Skipped(f"damaged PDF: {reason}") from None
