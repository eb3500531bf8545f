"""Ask your documents (issue 24), the engine room: the fast paths agree with the plain ones
they replaced (Markdown sections, word units and their counts), a re-index of an unchanged
tree opens no file, folder watching on real files, and the right chunk first for a question
in its passage's own words."""

from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path

import pytest
from conftest import TOKENIZER_DIR
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dolly_desktop.documents.chunk import TokenCounter
from dolly_desktop.documents.index import DocIndex, IndexReport
from dolly_desktop.documents.parse import _ATX, _FENCE, _SETEXT, Block, _markdown
from dolly_desktop.documents.watch import Watcher


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


# -- watching ---------------------------------------------------------------------------------

WAIT_S = 60  # for a poll to come round on a loaded machine (a bound on hanging, not a timing)


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    return TokenCounter(TOKENIZER_DIR / "tokenizer.json")


def put(path: Path, data: str | bytes) -> None:
    """Write a file whole at once (through a hidden name): a poll never sees half of it."""
    tmp = path.with_name("." + path.name)
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def watched(tmp_path: Path, counter: TokenCounter, interval: float):
    root = tmp_path / "notes"
    root.mkdir()
    put(root / "pump.txt", "The pump primes itself every morning.")
    db = tmp_path / "docs.sqlite3"
    with DocIndex(db) as ix:
        ix.add("c", [root])
    events: queue.Queue[tuple[str, IndexReport, str]] = queue.Queue()
    w = Watcher(counter, db, interval=interval)
    w.start(["c"], lambda name, r: events.put((name, r, threading.current_thread().name)))
    return root, db, w, events


def test_watching_reindexes_added_changed_and_deleted_files(tmp_path, counter):
    root, db, w, events = watched(tmp_path, counter, interval=0.05)
    try:
        name, r, thread = events.get(timeout=WAIT_S)  # the first poll catches up
        assert (name, r.added, thread) == ("c", 1, "documents-watcher")
        put(root / "valve.md", "# Valves\n\nThe zeppelin valve opens at dawn.")
        r = events.get(timeout=WAIT_S)[1]
        assert (r.added, r.changed, r.removed) == (1, 0, 0)
        put(root / "pump.txt", "The pump now needs a new impeller each spring.")
        r = events.get(timeout=WAIT_S)[1]
        assert (r.added, r.changed, r.removed) == (0, 1, 0)
        with DocIndex(db) as ix:  # another connection sees each change
            assert ix.search(["c"], "zeppelin")[0].rel == "valve.md"
            assert ix.search(["c"], "impeller")[0].rel == "pump.txt"
        (root / "valve.md").unlink()
        r = events.get(timeout=WAIT_S)[1]
        assert (r.added, r.changed, r.removed) == (0, 0, 1)
        put(root / "photo.jpg", b"\xff\xd8")  # a skipped file is a change to show
        r = events.get(timeout=WAIT_S)[1]
        assert [p for p, _ in r.skipped] == [str(root / "photo.jpg")]
        assert events.empty()
    finally:
        w.stop(timeout=WAIT_S)
    with DocIndex(db) as ix:
        assert ix.search(["c"], "zeppelin") == [] and [f[0] for f in ix.files("c")] == ["pump.txt"]
        ix.check()


def test_an_unchanged_tree_is_not_reindexed(tmp_path, counter, monkeypatch):
    calls: list[str] = []
    real = DocIndex.index

    def counted(self, name, *a, **k):
        calls.append(name)
        return real(self, name, *a, **k)

    monkeypatch.setattr(DocIndex, "index", counted)
    root, _, w, events = watched(tmp_path, counter, interval=0.02)
    try:
        events.get(timeout=WAIT_S)
        indexed = len(calls)
        rounds = w.rounds
        deadline = time.monotonic() + WAIT_S
        while w.rounds < rounds + 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert w.rounds >= rounds + 3 and len(calls) == indexed  # polled, nothing indexed
        put(root / "b.txt", "A second note about the boiler.")
        assert events.get(timeout=WAIT_S)[1].added == 1
        assert len(calls) == indexed + 1
    finally:
        w.stop(timeout=WAIT_S)


def test_stop_ends_the_watcher_within_an_interval(tmp_path, counter):
    _, _, w, events = watched(tmp_path, counter, interval=3600)
    events.get(timeout=WAIT_S)  # the first poll is done; the next one is an hour away
    w.stop(timeout=WAIT_S)
    assert not w.running
    w.start(["c", "no such collection"], lambda *a: None)  # a missing one is dropped, quietly
    w.stop(timeout=WAIT_S)
    assert not w.running


# -- retrieval quality --------------------------------------------------------------------------


def test_the_right_chunk_ranks_first_for_a_question_in_its_own_words(tmp_path, counter):
    """bench/docs.py's corpus (written for it: lighthouses, bakeries, bikes...): every question
    that uses its passage's own words finds that passage's chunk first, among filler chunks of
    the same files; paraphrased ones are measured in the bench, not held here."""
    from bench.docs import QUESTIONS, recall_ranks, write_recall_corpus

    write_recall_corpus(tmp_path / "corpus")
    with DocIndex(tmp_path / "docs.sqlite3") as ix:
        ix.add("c", [tmp_path / "corpus"])
        ix.index("c", counter)
        assert ix.info("c").chunks >= 3 * len({q[0] for q in QUESTIONS}) // 2
        ranks = recall_ranks(ix, "c")
    own = [q for q in QUESTIONS if q[1] == "own"]
    assert len(own) == 12
    assert ranks["own"] == [0] * len(own), list(zip(own, ranks["own"], strict=True))


# -- indexing in worker processes ---------------------------------------------------------------


def index_rows(db: Path) -> list[tuple]:
    with DocIndex(db) as ix:
        ix.check()
        q = (
            "SELECT f.rel, c.seq, c.page, c.heading, c.tokens, t.body FROM chunks c "
            "JOIN files f ON f.id = c.file_id JOIN chunk_text t ON t.rowid = c.id "
            "ORDER BY f.rel, c.seq"
        )
        return [*ix._db.execute(q), *ix.skipped("c")]


def test_a_pool_of_workers_indexes_what_one_process_does(tmp_path, counter, monkeypatch):
    from dolly_desktop.documents import prepare as prepare_module

    root = tmp_path / "docs"
    root.mkdir()
    for i in range(12):
        body = "\n\n".join(f"Section {j} of note {i}: pump {i * j} valves." * 30 for j in range(6))
        put(root / f"n{i:02}.md", f"# Note {i}\n\n{body}")
    put(root / "bad.txt", b"\0binary")
    put(root / "empty.md", "  ")

    def index_into(db: Path, workers: bool) -> IndexReport:
        monkeypatch.setattr(prepare_module, "POOL_MIN_BYTES", 0 if workers else 10**12)
        monkeypatch.setattr(prepare_module, "POOL_MIN_FILES", 1)
        with DocIndex(db) as ix:
            ix.add("c", [root])
            return ix.index("c", counter)

    one, pool = tmp_path / "one.sqlite3", tmp_path / "pool.sqlite3"
    assert index_into(one, False).added == index_into(pool, True).added == 12
    assert index_rows(pool) == index_rows(one)
    # Touched, moved, changed and unchanged files, through the pool.
    os.utime(root / "n00.md", ns=(1, 1))
    os.replace(root / "n01.md", root / "moved.md")
    put(root / "n02.md", "# Note 2\n\nThe pump was replaced by a zeppelin valve.")
    r = index_into(pool, True)
    assert (r.unchanged, r.renamed, r.changed, r.added, r.removed) == (10, 1, 1, 0, 0)
    assert index_into(one, False).renamed == 1
    assert index_rows(pool) == index_rows(one)


# -- chunking: the fast word split and the regex agree on text and counts ---------------------

WORDS = ["pump", "Pump", "the", "don't", "3.14", "naïve", "日本", "(a)", "end.", "x" * 120]


PROSE = st.lists(  # single spaces, short words: split(" ")
    st.tuples(st.sampled_from(WORDS[:-1]), st.sampled_from([" ", "\n", " \n"])),
    min_size=1,
    max_size=400,
)
ODD = st.lists(  # runs of spaces, long words: the regex
    st.tuples(st.sampled_from(WORDS), st.sampled_from([" ", "  ", "\n", " \n"])),
    min_size=1,
    max_size=400,
)


@settings(max_examples=150, deadline=None)
@given(blocks=st.lists(st.one_of(PROSE, ODD), min_size=1, max_size=4))
def test_chunks_are_runs_of_their_blocks_with_true_counts(blocks, counter):
    from dolly_desktop.documents.chunk import chunk_blocks

    texts = ["".join(w + sep for w, sep in b) for b in blocks]
    blocks_ = [Block(t, heading=f"H{i}") for i, t in enumerate(texts)]
    chunks = chunk_blocks(blocks_, counter, target=24, overlap=6, max_tokens=30)  # many cuts
    whole = "\n\n".join(t.replace(" \n", "\n").strip() for t in texts)
    for c in chunks:
        assert c.text in whole  # a run of the page's text, cut at whitespace (or inside a
        i = whole.index(c.text)  # word of over 100 characters: the x's)
        j = i + len(c.text)
        assert i == 0 or whole[i - 1].isspace() or whole[i - 1] == c.text[0] == "x"
        assert j == len(whole) or whole[j].isspace() or whole[j] == c.text[-1] == "x"
        n = counter.count(c.text)
        assert c.tokens >= n - 3  # each unit counted, added up: never short (the budget)
        if "x" * 101 not in c.text:  # a word over 100 characters is counted in pieces: high
            assert c.tokens <= n + 3
    assert chunks and chunks[-1].text == whole[-len(chunks[-1].text) :]


def test_files_in_nested_folders_keep_their_relative_paths(tmp_path, counter):
    root = tmp_path / "notes"
    (root / "sub" / "deeper").mkdir(parents=True)
    put(root / "top.txt", "The top note.")
    put(root / "sub" / "deeper" / "low.MD", "# Low\n\nThe lowest note.")
    put(root / "sub" / "photo.jpeg", b"\xff")
    with DocIndex(tmp_path / "docs.sqlite3") as ix:
        ix.add("c", [root])
        r = ix.index("c", counter)
        assert [f[0] for f in ix.files("c")] == [os.path.join("sub", "deeper", "low.MD"), "top.txt"]
        assert r.skipped == [(str(root / "sub" / "photo.jpeg"), "unsupported type (.jpeg)")]
        assert ix.search(["c"], "lowest")[0].anchor() == "sub/deeper/low.MD, section “Low”"
