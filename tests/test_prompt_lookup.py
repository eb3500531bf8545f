"""Prompt-lookup decoding (generation/lookup.py): the same greedy answer, token for token, in
fewer inferences; auto for long prompts only; the CLI flag and the window's setting."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest
from conftest import EXACT

from dolly_desktop.generation.lookup import NUM_ASSISTANT_TOKENS, LookupMode
from dolly_desktop.generation.params import GenerationParams

GREEDY = GenerationParams(greedy=True, max_new_tokens=96)
# Copy-heavy: a passage and an instruction to repeat it. The tiny model is random and copies
# little, but its own answers repeat themselves, which prompt lookup also finds.
# Long enough (about 90 tokens past the template head) for auto to look it up.
THINGS = ["cup", "book", "lamp", "pen", "key", "coin", "card", "ring"]
PASSAGE = " ".join(f"Item {i}: the {w} is on the table." for i, w in enumerate(THINGS))
COPY = ("Repeat the passage word for word.", PASSAGE)
SHORT = ("Who is Dolly?", "")


@pytest.fixture(scope="module")
def lookup_engine(tiny_fp16):
    from dolly_desktop.generation.engines.local import Engine

    eng = Engine(tiny_fp16, properties=EXACT, prompt_lookup="on")
    yield eng
    eng.close()


@pytest.mark.parametrize("case", [COPY, SHORT], ids=["copy", "short"])
def test_greedy_answer_is_token_identical_with_prompt_lookup(engine, lookup_engine, case):
    instruction, context = case
    plain = engine.generate(instruction, GREEDY, context=context)
    looked = lookup_engine.generate(instruction, GREEDY, context=context)
    assert looked.token_ids == plain.token_ids
    assert looked.text == plain.text
    # The plain engine runs one inference a token; with prompt lookup some inferences
    # accepted candidates from the prompt (or the answer so far), so there are fewer.
    assert plain.extra["inferences"] == plain.generated_tokens
    assert looked.extra["prompt_lookup"] is True
    assert looked.extra["inferences"] < looked.generated_tokens


def test_prompt_lookup_keeps_max_new_tokens_and_cancel(lookup_engine):
    instruction, context = COPY
    for n in (1, 2, 5, 13):
        r = lookup_engine.generate(instruction, replace(GREEDY, max_new_tokens=n), context=context)
        assert r.generated_tokens == n
    # Cancel is honoured within one inference: at most the candidates it accepted.
    pieces: list[str] = []

    def cancel_at_first(piece: str) -> None:
        pieces.append(piece)
        lookup_engine.cancel()

    r = lookup_engine.generate(instruction, GREEDY, cancel_at_first, context=context)
    assert r.stop_reason.value == "cancelled"
    assert 1 <= r.generated_tokens <= 1 + NUM_ASSISTANT_TOKENS


def test_auto_looks_up_long_prompts_and_keeps_the_template_for_short_ones(engine, tiny_fp16):
    from dolly_desktop.generation.engines.local import Engine

    auto = Engine(tiny_fp16, properties=EXACT, prompt_lookup="auto", reuse_template=True)
    notices: list[str] = []
    auto.notify = notices.append
    try:
        short = auto.generate(*SHORT[:1], GREEDY)
        assert short.extra["prompt_lookup"] is False
        assert short.extra["prefilled_tokens"] < short.input_tokens  # the cached head
        assert notices == []
        long = auto.generate(COPY[0], GREEDY, context=COPY[1])
        assert long.extra["prompt_lookup"] is True
        assert len(notices) == 1 and "prompt lookup" in notices[0]  # why this answer waits
        assert long.extra["inferences"] < long.generated_tokens
        assert long.token_ids == engine.generate(COPY[0], GREEDY, context=COPY[1]).token_ids
        # The plain pipeline's cached head survived the long answer on the other pipeline.
        again = auto.generate(*SHORT[:1], GREEDY)
        assert again.extra["prefilled_tokens"] < again.input_tokens
        assert again.token_ids == short.token_ids
    finally:
        auto.close()


def test_auto_frees_prompt_lookup_after_answers_that_copy_too_little(tiny_fp16):
    from dolly_desktop.generation import lookup
    from dolly_desktop.generation.engines import local

    auto = local.Engine(tiny_fp16, properties=EXACT, prompt_lookup="auto")
    try:
        answers = [auto.generate(COPY[0], GREEDY, context=COPY[1]) for _ in range(lookup.MISSES)]
        for a in answers:  # the random model copies a token in ten: far below break-even
            assert a.extra["prompt_lookup"] is True
            assert not lookup.pays(a.generated_tokens, a.extra["inferences"])
        assert auto._lookup_pipe is None  # its memory handed back
        plain = auto.generate(COPY[0], GREEDY, context=COPY[1])
        assert plain.extra["prompt_lookup"] is False
        assert plain.token_ids == answers[0].token_ids
    finally:
        auto.close()


def test_auto_stays_plain_when_a_second_copy_does_not_fit(tiny_fp16, monkeypatch):
    from dolly_desktop.generation.engines import local

    monkeypatch.setattr(local, "available_memory_bytes", lambda: 1 << 20)
    auto = local.Engine(tiny_fp16, properties=EXACT, prompt_lookup="auto")
    try:
        r = auto.generate(COPY[0], replace(GREEDY, max_new_tokens=8), context=COPY[1])
        assert r.extra["prompt_lookup"] is False and r.generated_tokens == 8
    finally:
        auto.close()


def test_modes_parse_and_refuse_in_one_sentence():
    from dolly_desktop.errors import DollyError
    from dolly_desktop.generation.lookup import parse_mode

    assert parse_mode("ON") is LookupMode.ON and parse_mode(LookupMode.AUTO) is LookupMode.AUTO
    with pytest.raises(DollyError, match="one of off, on, auto"):
        parse_mode("sometimes")


# ---- the CLI ---------------------------------------------------------------------------


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dolly_desktop.cli", "generate", "--no-history", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_cli_prompt_lookup_gives_the_same_answer(tiny_fp16, tmp_path):
    passage = tmp_path / "passage.txt"
    passage.write_text(PASSAGE)
    common = ["--model", str(tiny_fp16), "--greedy", "--max-new-tokens", "48"]
    common += ["--context", str(passage), COPY[0]]
    off = run("--prompt-lookup", "off", *common)
    on = run("--prompt-lookup", "on", *common)
    auto = run("--prompt-lookup", "auto", *common)  # a passage, so prompt lookup
    for p in (off, on, auto):
        assert p.returncode == 0, p.stderr
    assert on.stdout == off.stdout == auto.stdout
    assert "prompt lookup: 48 tokens in" in on.stderr
    assert "prompt lookup" in auto.stderr and "prompt lookup" not in off.stderr
    default = run(*common)
    assert default.returncode == 0 and "prompt lookup" not in default.stderr  # off by default
    short = run("--prompt-lookup", "auto", "--model", str(tiny_fp16), "--max-new-tokens", "4", "Hi")
    assert short.returncode == 0 and "prompt lookup" not in short.stderr


def test_cli_refuses_a_bad_prompt_lookup_in_one_line(tiny_fp16):
    p = run("--model", str(tiny_fp16), "--prompt-lookup", "maybe", "hi")
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "--prompt-lookup" in p.stderr and "maybe" in p.stderr
    p = run("--remote", "http://127.0.0.1:9/v1", "--prompt-lookup", "on", "hi")
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "local model" in p.stderr


# ---- the window ------------------------------------------------------------------------


def test_window_setting_persists_and_reaches_the_engine(qtbot, tiny_window):
    from dolly_desktop.ui.settings import AppSettings

    w = tiny_window
    assert w.worker.engine.prompt_lookup is LookupMode.OFF  # the default
    dialog = w.open_settings()
    on = dialog.lookup.findData("on")
    dialog.lookup.setCurrentIndex(on)
    with qtbot.waitSignal(w.load_done, timeout=120_000):
        dialog.lookup.activated.emit(on)
    assert w.worker.engine.prompt_lookup is LookupMode.ON
    assert AppSettings().prompt_lookup == "on"  # in the INI file, for the next start
    dialog.close()
    w.settings.sync()
    from dolly_desktop.ui.model_setup.settings_dialog import SettingsDialog

    again = SettingsDialog(None, AppSettings())
    assert again.lookup.currentData() == "on"
    again.close()
