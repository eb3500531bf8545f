"""Ask your documents (issue 24), the engine room: the fast paths agree with the plain ones
they replaced (Markdown sections, word units and their counts), a re-index of an unchanged
tree opens no file, folder watching on real files, and the right chunk first for a question
in its passage's own words."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from dolly_desktop.documents.parse import _ATX, _FENCE, _SETEXT, Block, _markdown


def markdown_line_by_line(text: str) -> list[Block]:
    """The Markdown sections as first written: every line looked at in Python."""
    blocks: list[Block] = []
    heading, lines = "", []
    fenced = False

    def close() -> None:
        if lines:
            blocks.append(Block("\n".join(lines), heading=heading))

    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            m = _ATX.match(line)
            underline = _SETEXT.match(line) and lines and lines[-1].strip()
            if m or underline:
                title = m.group(2).strip() if m else lines.pop().strip()
                close()
                heading, lines = title, [title]
                continue
        lines.append(line)
    close()
    return blocks


MD_PARTS = ["# Title", "## Sub #", "   ### three", "    # code", "Text line", "", "  ", "===",
            "---", " - item", "```", "~~~", "```py", "#nospace", "Under", "-", "x\r", "\x0c",
            "\u2028", "é ü", "###### six", "####### seven"]  # fmt: skip


@settings(max_examples=400)
@given(st.lists(st.sampled_from(MD_PARTS), max_size=30), st.sampled_from(["\n", "\r\n", "\r"]))
@example(["Under", "---", "---", "# T", "===", "body"], "\n")
def test_markdown_sections_as_line_by_line(parts, newline):
    text = newline.join(parts)
    assert _markdown(text) == markdown_line_by_line(text)
