"""`dolly-desktop docs ...` and `generate --docs` end to end, as subprocesses, on real files
and the tiny model."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from cli_runs import run, run_on_a_terminal
from test_documents import pdf_bytes, write_corpus


def ok(*args: str) -> subprocess.CompletedProcess:
    p = run(*args)
    assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p


@pytest.fixture
def corpus(own_home, tmp_path, tiny_fp16) -> Path:
    root = tmp_path / "docs"
    write_corpus(root)
    (root / "junk.bin").write_bytes(b"\0\1")
    ok("docs", "add", "manuals", str(root))
    p = ok("docs", "index", "manuals", "--model", str(tiny_fp16))
    assert "4 new" in p.stdout and "skipped" in p.stdout and "junk.bin" in p.stdout
    return root


def test_add_index_list_show_search_remove(corpus, tiny_fp16):
    p = ok("docs", "list")
    assert re.match(r"manuals\t4 files\t\d+ chunks\t.* MB\t1 skipped\t", p.stdout)
    p = ok("docs", "show", "manuals")
    assert "manual.pdf" in p.stdout and "skipped " in p.stdout and "unsupported type" in p.stdout
    p = ok("docs", "search", "manuals", "How often is the impeller replaced?")
    assert p.stdout.startswith("[1] manual.pdf, page 2  (bm25")
    assert run("docs", "search", "manuals", "zzqqx").returncode == 1  # ran, found nothing
    p = ok("docs", "reindex", "manuals", "--model", str(tiny_fp16))
    assert "0 new, 0 changed, 4 unchanged" in p.stdout
    ok("docs", "remove", "manuals")
    assert "no collections yet" in ok("docs", "list").stdout
    assert corpus.joinpath("notes.txt").is_file()  # the files themselves are untouched


def test_bad_input_exits_2_with_one_line(corpus, tiny_fp16, tmp_path):
    m = str(tiny_fp16)
    cases = [
        (["docs", "add", "x", str(tmp_path / "none")], "There is nothing at"),
        (["docs", "add", "../x", str(corpus)], "is not a collection name"),
        (["docs", "index", "nope"], "no collection 'nope'. Collections: manuals"),
        (["docs", "search", "nope", "q"], "no collection 'nope'"),
        (["docs", "search", " , ", "q"], "Name at least one collection"),
        (["docs", "remove", "nope"], "no collection 'nope'"),
        (["docs", "index", "manuals", "--model", str(tmp_path)], "has no tokenizer.json"),
        (["docs", "index", "manuals", "--model", "no-such-model"], "no folder or installed"),
        (["docs"], "required"),
        (["generate", "--model", m, "--docs", "nope", "hi"], "no collection 'nope'"),
        (["generate", "--model", m, "--docs", "manuals", "zzqqx"], "--docs-fallback"),
        (
            ["generate", "--model", m, "--docs", "manuals", "--context", str(corpus / "notes.txt"),
             "hi"],
            "--context or --docs",
        ),
    ]  # fmt: skip
    for args, message in cases:
        p = run(*args)
        assert p.returncode == 2, (args, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1, (args, p.stderr)
        assert message in lines[0], (args, p.stderr)


def test_index_without_any_model_says_how(own_home, tmp_path):
    (tmp_path / "a.txt").write_text("words")
    ok("docs", "add", "a", str(tmp_path / "a.txt"))
    p = run("docs", "index", "a")
    assert p.returncode == 2 and "tokenizer.json" in p.stderr and "--model" in p.stderr


def test_generate_answers_from_documents_and_prints_sources(corpus, tiny_fp16):
    from dolly_desktop.generation.engines.local import Engine
    from dolly_desktop.generation.params import GenerationParams
    from dolly_desktop.history.store import History

    question = "How often is the impeller replaced?"
    p = ok(
        "generate", "--model", str(tiny_fp16), "--docs", "manuals", "--greedy",
        "--max-new-tokens", "6", question,
    )  # fmt: skip
    answer, _, sources = p.stdout.partition("\nSources:\n")
    assert sources.splitlines()[0] == "[1] manual.pdf, page 2"
    assert all(re.match(r"\[\d+\] \S", line) for line in sources.splitlines())
    m = re.search(r"prompt (\d+) tokens", p.stderr)
    assert m and int(m.group(1)) + 6 <= 2048
    # The passage went into Input: exactly as the history keeps it; the answer is the one a
    # direct generate with that passage gives.
    entry = History().list(limit=1)[0]
    assert "Replace the impeller every spring." in entry.context
    engine = Engine(tiny_fp16)
    try:
        expected = engine.generate(
            question, GenerationParams(greedy=True, max_new_tokens=6), context=entry.context
        )
    finally:
        engine.close()
    assert answer.strip() == expected.text.strip()


def test_generate_with_room_for_few_tokens_still_fits(corpus, tiny_fp16):
    many = corpus / "many"
    many.mkdir()
    for i in range(20):
        (many / f"p{i}.txt").write_text(f"impeller spring note {i}. " + "water pump " * 300)
    ok("docs", "index", "manuals", "--model", str(tiny_fp16))
    for max_new in ("1", "700", "1000"):
        p = ok(
            "generate", "--model", str(tiny_fp16), "--docs", "manuals", "--max-new-tokens",
            max_new, "--seed", "1", "impeller spring",
        )  # fmt: skip
        n = int(re.search(r"prompt (\d+) tokens", p.stderr).group(1))
        assert n + int(max_new) <= 2048, (max_new, n)
        assert "\nSources:\n[1] " in p.stdout


def test_nothing_matches_answers_without_a_passage_only_when_asked(corpus, tiny_fp16):
    p = ok(
        "generate", "--model", str(tiny_fp16), "--docs", "manuals", "--docs-fallback",
        "--max-new-tokens", "3", "zzqqx",
    )  # fmt: skip
    assert "answering without a passage" in p.stderr and "Sources:" not in p.stdout


def test_pdf_page_anchor_survives_an_edit_between_runs(corpus, tiny_fp16):
    (corpus / "manual.pdf").write_bytes(pdf_bytes(["One", "Two", "Three", "Gaskets on page four"]))
    p = ok("docs", "index", "manuals", "--model", str(tiny_fp16))
    assert "1 changed" in p.stdout
    assert ok("docs", "search", "manuals", "gaskets").stdout.startswith("[1] manual.pdf, page 4")
    assert run("docs", "search", "manuals", "impeller").returncode == 1


def test_history_keeps_the_chunks_used_after_the_files_change(corpus, tiny_fp16):
    from dolly_desktop.history.store import History

    ok(
        "generate", "--model", str(tiny_fp16), "--docs", "manuals", "--max-new-tokens", "2",
        "--seed", "3", "How often is the impeller replaced?",
    )  # fmt: skip
    (corpus / "manual.pdf").unlink()
    ok("docs", "index", "manuals", "--model", str(tiny_fp16))
    entry = History().list(limit=1)[0]
    first = entry.sources[0]
    assert (first["rel"], first["page"], first["collection"]) == ("manual.pdf", 2, "manuals")
    assert "Replace the impeller every spring." in first["text"]
    assert first["text"] in entry.context  # the exact text that went into the prompt
    md = ok("history", "show", str(entry.id)).stdout
    assert "### Sources" in md and "1. manual.pdf, page 2" in md
    line = ok("history", "export", "--format", "jsonl").stdout.splitlines()[0]
    assert '"sources": [{"collection": "manuals"' in line


def test_index_shows_progress_on_a_terminal(own_home, tmp_path, tiny_fp16):
    root = tmp_path / "docs"
    write_corpus(root)
    (root / "junk.bin").write_bytes(b"\0")
    ok("docs", "add", "t", str(root))
    code, out, bar = run_on_a_terminal(
        "docs", "index", "t", "--model", str(tiny_fp16), columns=120, timeout=120
    )
    assert code == 0
    assert "indexing" in bar and "4/4 files, 1 skipped" in bar and "B/s" in bar, bar
    assert "4 new" in out  # the summary still goes to stdout
    plain = ok("docs", "index", "t", "--model", str(tiny_fp16))
    assert "indexing" not in plain.stderr  # no bar off a terminal
