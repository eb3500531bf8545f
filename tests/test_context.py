"""Dolly with a passage to work from: the `Input:` template Dolly was trained on, in the
engine, the CLI and the history (with the migration of a history file made before contexts)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest
from test_history import MODEL, PARAMS, cli, history_file, home_env, result

from dolly_desktop.errors import DollyError
from dolly_desktop.generation.prompt import build_prompt, read_text_file
from dolly_desktop.history import store as history_mod
from dolly_desktop.history.store import SCHEMA_VERSION, History

PASSAGE = (
    "The Tillamook Creamery was founded in 1909 by ten dairy farmers on the Oregon coast. "
    "Its visitor centre opened in 1949 and welcomes over a million people each year."
)
QUESTION = "When was the creamery founded?"
# Written out by hand from databrickslabs/dolly training/consts.py PROMPT_WITH_INPUT_FORMAT
# (intro, blank line, instruction key, instruction, blank line, Input:, passage, blank line,
# response key), not from the app's own constants.
TRAINED = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n"
    + QUESTION
    + "\n\nInput:\n"
    + PASSAGE
    + "\n\n### Response:\n"
)


def test_context_prompt_is_dollys_training_format():
    assert build_prompt(QUESTION, PASSAGE) == TRAINED
    assert build_prompt(f"  {QUESTION}\n", f"\n{PASSAGE}  \n") == TRAINED
    for blank in ("", "   ", "\n\t\n"):  # no passage: exactly the prompt without one
        assert build_prompt(QUESTION, blank) == build_prompt(QUESTION)


def test_context_prompt_token_ids(engine, tiny_fp16):
    from transformers import AutoTokenizer

    ids = engine.encode(build_prompt(QUESTION, PASSAGE))
    assert ids == AutoTokenizer.from_pretrained(str(tiny_fp16))(TRAINED)["input_ids"]
    assert ids.count(50278) == 1 and ids.count(50279) == 1  # the two special keys, once
    start = ids.index(50278)
    assert engine.encode("Input:")[0] in ids[start:]  # a plain-text key, as in training
    assert ids[ids.index(50279) + 1 :] == engine.encode("\n")


def test_engine_answers_with_a_context(engine):
    with_ctx = engine.generate(QUESTION, PARAMS_GREEDY, context=PASSAGE)
    without = engine.generate(QUESTION, PARAMS_GREEDY)
    assert with_ctx.input_tokens == len(engine.encode(TRAINED))
    assert with_ctx.input_tokens > without.input_tokens + 30


PARAMS_GREEDY = PARAMS.__class__(greedy=True, max_new_tokens=8)


def test_read_text_file_refuses_what_is_not_utf8_text(tmp_path):
    good = tmp_path / "p.md"
    good.write_text(PASSAGE, encoding="utf-8")
    assert read_text_file(good) == PASSAGE
    (tmp_path / "bin").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "long.txt").write_text("x" * 50)
    with pytest.raises(DollyError, match="not a text file"):
        read_text_file(tmp_path / "bin")
    with pytest.raises(DollyError, match="not UTF-8"):
        read_text_file(tmp_path / "latin1.txt")
    with pytest.raises(DollyError, match="longer than 10"):
        read_text_file(tmp_path / "long.txt", limit=10)
    with pytest.raises(DollyError, match="cannot be read"):
        read_text_file(tmp_path / "missing.txt")


def test_cli_generate_with_context_records_and_finds_the_passage(tiny_models, tmp_path):
    from transformers import AutoTokenizer

    home = tmp_path / "home"
    passage = tmp_path / "passage.txt"
    passage.write_text(PASSAGE, encoding="utf-8")
    model = str(tiny_models["FP16"])
    g = cli(home, "generate", "--model", model, "--context", str(passage), "--greedy",
            "--max-new-tokens", "8", QUESTION)  # fmt: skip
    assert g.returncode == 0, g.stderr
    n = len(AutoTokenizer.from_pretrained(model)(TRAINED)["input_ids"])
    assert f"prompt {n} tokens" in g.stderr, g.stderr

    found = cli(home, "history", "search", "Tillamook")  # a word only the passage has
    assert found.returncode == 0 and found.stdout.strip(), found.stderr
    (entry,) = History(history_file(home)).list()
    assert entry.context == PASSAGE and entry.instruction == QUESTION
    md = cli(home, "history", "export", "--format", "md")
    assert f"### Input\n\n{PASSAGE}" in md.stdout
    jl = cli(home, "history", "export", "--format", "jsonl")
    assert json.loads(jl.stdout.splitlines()[0])["context"] == PASSAGE

    stdin = subprocess.run(
        [sys.executable, "-m", "dolly_desktop.cli", "generate", "--model", model, "--context",
         "-", "--no-history", "--max-new-tokens", "4", QUESTION],
        input=PASSAGE, capture_output=True, text=True, env=home_env(home),
    )  # fmt: skip
    assert stdin.returncode == 0 and f"prompt {n} tokens" in stdin.stderr, stdin.stderr
    bad = cli(home, "generate", "--model", model, "--context", str(tmp_path), QUESTION)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def test_a_history_file_from_before_contexts_is_migrated(tmp_path):
    path = tmp_path / "history.sqlite3"
    old = sqlite3.connect(path, isolation_level=None)  # schema 1, as the last release wrote it
    for sql in history_mod.MIGRATIONS[0]:
        old.execute(sql)
    old.execute("PRAGMA user_version = 1")
    old.execute(
        "INSERT INTO entries (created_at, updated_at, finished_at, instruction, response,"
        " params, model_name, model_precision, model_folder, device, status)"
        " VALUES ('2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:01.000000Z',"
        " '2026-01-01T00:00:01.000000Z', 'Old pineapple question', 'An answer.', ?, 'm',"
        " 'INT4', '/m', 'CPU', 'end')",
        (json.dumps(PARAMS.to_dict()),),
    )
    old.close()

    with History(path) as h:
        assert h.notice is None, h.notice
        (entry,) = h.list(query="pineapple")  # the old row, found through the rebuilt index
        assert entry.context == "" and entry.response == "An answer."
        run = h.start_run(QUESTION, PARAMS, MODEL, "CPU", context=PASSAGE)
        run.finish(result("1909."))
        assert [e.instruction for e in h.list(query="Tillamook")] == [QUESTION]
        assert [e.instruction for e in h.list(query="pineapple")] == ["Old pineapple question"]
    version = sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0]
    assert version == SCHEMA_VERSION  # every migration since, in order


def test_the_api_takes_a_passage_and_the_remote_engine_sends_it(tiny_models):
    """Through a real `serve` with the official openai client: `context` on /v1/completions,
    two user messages in a row on /v1/chat/completions; and RemoteEngine's context."""
    import openai
    from serving import serve_process
    from transformers import AutoTokenizer

    from dolly_desktop.generation.engines.remote import RemoteEngine
    from dolly_desktop.generation.params import GenerationParams

    model = tiny_models["FP16"]
    n = len(AutoTokenizer.from_pretrained(str(model))(TRAINED)["input_ids"])
    plain = len(AutoTokenizer.from_pretrained(str(model))(build_prompt(QUESTION))["input_ids"])
    with serve_process(model) as served:
        client = openai.OpenAI(base_url=served.url, api_key="none")
        name = client.models.list().data[0].id
        c = client.completions.create(
            model=name, prompt=QUESTION, max_tokens=4, extra_body={"context": PASSAGE}
        )
        assert c.usage.prompt_tokens == n
        chat = client.chat.completions.create(
            model=name,
            max_tokens=4,
            messages=[{"role": "user", "content": PASSAGE}, {"role": "user", "content": QUESTION}],
        )
        assert chat.usage.prompt_tokens == n
        alone = client.chat.completions.create(
            model=name,
            max_tokens=4,
            messages=[
                {"role": "user", "content": PASSAGE},
                {"role": "assistant", "content": "Noted."},
                {"role": "user", "content": QUESTION},
            ],
        )
        assert alone.usage.prompt_tokens == plain  # not two in a row: no passage
        too_long = "x" * 100_001
        with pytest.raises(openai.BadRequestError, match="context"):
            client.completions.create(
                model=name, prompt=QUESTION, max_tokens=4, extra_body={"context": too_long}
            )
        remote = RemoteEngine(served.url)
        result = remote.generate(QUESTION, GenerationParams(max_new_tokens=4), context=PASSAGE)
        remote.close()
        assert result.input_tokens == n
