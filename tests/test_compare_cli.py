"""`dolly-desktop models check`, `models list` with the stored check, and `dolly-desktop
compare`, end to end in a subprocess on the tiny model installed in a store of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import copy_model

from dolly_desktop.models.checks import CHECK_FILE

NAME = "dolly-v2-tiny"


@pytest.fixture(scope="module")
def home(tiny_models, tmp_path_factory) -> Path:
    """An app home whose store holds the tiny model's FP16, INT8 and INT4."""
    home = tmp_path_factory.mktemp("home")
    for precision, folder in tiny_models.items():
        copy_model(folder, home / "data" / "models" / NAME / precision)
    return home


def cli(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "DOLLY_DESKTOP_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "dolly_desktop.cli", *args],
        capture_output=True, text=True, timeout=600, env=env, input=stdin,
    )  # fmt: skip


def _checks(home: Path) -> list[Path]:
    return sorted((home / "data" / "models").rglob(f"*{CHECK_FILE}*"))


def _snapshot(home: Path) -> dict[str, int]:
    root = home / "data" / "models"
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_models_check_prints_stores_and_lists(home, tmp_path, report_figure):
    t0 = time.perf_counter()
    p = cli(home, "models", "check", f"{NAME}/INT4", "--max-new-tokens", "8")
    report_figure(
        "models check tiny INT4, 50 prompts x 8 tokens", f"{time.perf_counter() - t0:.1f} s"
    )
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == f"{NAME}/INT4 against {NAME}/FP16, teacher-forced over its greedy answers"
    table = {ln.split("  ")[0].strip(): ln for ln in lines[2:]}
    for category in ("open QA", "brainstorming", "classification", "closed QA",
                     "summarization", "extraction", "overall"):  # fmt: skip
        assert category in table, p.stdout
    overall = table["overall"].split()
    assert overall[1] == "50" and overall[3].endswith("%")
    stored = home / "data" / "models" / NAME / "INT4" / CHECK_FILE
    record = json.loads(stored.read_text())
    assert record["prompts"] == 50 and record["reference"] == f"{NAME}/FP16"
    assert f"{record['top1']:.1%}" == overall[3]
    assert "measured on this computer, 50 prompts" in p.stderr
    listing = cli(home, "models", "list")
    assert listing.returncode == 0, listing.stderr
    assert f"checked: INT4: {record['top1']:.0%} of tokens as FP16, measured on this computer" \
        in listing.stdout  # fmt: skip
    # Own prompts, against INT8, as JSON: the INT4 result is replaced, atomically.
    mine = tmp_path / "mine.txt"
    mine.write_text("Who is Dolly?\nName 3 advantages to be a cat\n")
    p = cli(home, "models", "check", f"{NAME}/INT4", "--against", "INT8", "--prompts",
            str(mine), "--max-new-tokens", "8", "--json")  # fmt: skip
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["reference"] == f"{NAME}/INT8" and out["prompts"] == 2
    assert out["prompt_set"] == "mine.txt" and out["stored"] == str(stored)
    assert json.loads(stored.read_text())["reference"] == f"{NAME}/INT8"
    assert _checks(home) == [stored]


def test_compare_json(home, report_figure):
    t0 = time.perf_counter()
    p = cli(home, "compare", "--model", f"{NAME}/INT4", "--model", f"{NAME}/FP16",
            "--max-new-tokens", "24", "--json", "Who is Dolly?")  # fmt: skip
    report_figure("compare tiny INT4 and FP16, 24 tokens", f"{time.perf_counter() - t0:.1f} s")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["reference"] == f"{NAME}/FP16" and out["loading"] == "together"
    assert out["params"]["greedy"] is True
    int4, fp16 = out["models"]
    assert [int4["model"], fp16["model"]] == [f"{NAME}/INT4", f"{NAME}/FP16"]
    assert fp16["reference"] and fp16["agreement"] is None
    a = int4["agreement"]
    assert a["tokens"] > 0 and a["top1"] < 1.0 and a["mean_kl"] > 0
    for m in (int4, fp16):
        assert m["tokens"] > 0 and m["tokens_per_s"] > 0 and m["ttft_s"] > 0
        assert m["peak_rss_bytes"] is None or m["peak_rss_bytes"] > 0
    report_figure(
        "compare tiny INT4 vs FP16, one prompt", f"top-1 {a['top1']:.1%}, KL {a['mean_kl']:.4f}"
    )


def test_a_variant_compared_with_a_copy_of_itself(home, tmp_path):
    twin = copy_model(home / "data" / "models" / NAME / "INT8", tmp_path / "INT8-copy")
    p = cli(home, "compare", "--model", f"{NAME}/INT8", "--model", str(twin),
            "--max-new-tokens", "16", "--json", "Who is Dolly?")  # fmt: skip
    assert p.returncode == 0, p.stderr
    first, second = json.loads(p.stdout)["models"]
    assert first["reference"] and first["text"] == second["text"]
    assert second["agreement"]["top1"] == 1.0 and second["agreement"]["mean_kl"] == 0.0
    assert second["agreement"]["median_first_divergence"] is None


def test_compare_text_output_says_how_it_loaded(home):
    p = cli(home, "compare", "--model", f"{NAME}/INT4", "--model", f"{NAME}/INT8",
            "--max-new-tokens", "8", "Name 3 advantages to be a cat")  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert f"── {NAME}/INT8 (reference) ──" in p.stdout and f"── {NAME}/INT4 ──" in p.stdout
    assert "tok/s" in p.stdout and "reference" in p.stdout
    assert "Loading all 2 at once" in p.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["compare", "--model", "nope/INT4", "--model", f"{NAME}/INT8", "hi"], "nope/INT4"),
        (["compare", "--model", f"{NAME}/INT4", "hi"], "two or three models"),
        (["compare", "--model", f"{NAME}/INT4", "--model", f"{NAME}/INT4", "hi"], "twice"),
        (["compare", "--model", f"{NAME}/INT4", "--model", f"{NAME}/INT8", " "], "empty"),
        (
            [
                "compare",
                "--model",
                f"{NAME}/INT4",
                "--model",
                f"{NAME}/INT8",
                "--context",
                "/nonexistent/passage.txt",
                "hi",
            ],
            "cannot be read",
        ),
        (["models", "check", "nope/INT4"], "no installed model called nope/INT4"),
        (["models", "check", f"{NAME}/FP16"], "no installed variant of higher precision"),
        (["models", "check", f"{NAME}/INT4", "--against", "INT4"], "against itself"),
        (["models", "check", f"{NAME}/INT4", "--prompts", "/nonexistent/p.txt"], "cannot be read"),
        (["models", "check", f"{NAME}/INT4", "--max-new-tokens", "0"], "--max-new-tokens"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(home, args, says):
    before = _snapshot(home)
    p = cli(home, *args)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert says in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert p.stdout == ""
    assert _snapshot(home) == before


@pytest.mark.parametrize("content", [b"\x7fELF\x02\x01\x00\x00binary", b"", b"\n# nothing\n"])
def test_a_bad_prompts_file_is_refused(home, tmp_path, content):
    f = tmp_path / "prompts.txt"
    f.write_bytes(content)
    before = _snapshot(home)
    p = cli(home, "models", "check", f"{NAME}/INT8", "--prompts", str(f))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert _snapshot(home) == before
