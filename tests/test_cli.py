"""The headless CLI end to end, as a subprocess."""

from __future__ import annotations

from cli_runs import run

from dolly_desktop.generation.params import GenerationParams


def test_generate_streams_and_reports_metrics(tiny_models):
    from dolly_desktop.generation.engines.local import Engine

    model = tiny_models["INT4"]
    p = run(
        "generate", "--model", str(model), "--greedy", "--max-new-tokens", "12", "Who is Dolly?"
    )
    assert p.returncode == 0, p.stderr
    expected = Engine(model).generate(
        "Who is Dolly?", GenerationParams(greedy=True, max_new_tokens=12)
    )
    assert p.stdout.strip() == expected.text
    assert "12 tokens" in p.stderr and "tok/s" in p.stderr and "stopped: length" in p.stderr


def test_generate_reads_stdin(tiny_models):
    p = run(
        "generate",
        "--model",
        str(tiny_models["INT4"]),
        "--max-new-tokens",
        "3",
        "--seed",
        "1",
        stdin="Who is Dolly?",
    )
    assert p.returncode == 0, p.stderr
    assert "3 tokens" in p.stderr


def test_bad_input_exits_2_with_one_line(tiny_models, tiny_checkpoint, tmp_path):
    model = str(tiny_models["INT4"])
    cases = [
        (["generate", "--model", model, "--top-k", "99", "hi"], "top-k must be from 0 to 50"),
        (["generate", "--model", model, "--max-new-tokens", "abc", "hi"], "invalid int value"),
        (["generate", "--model", model, "   "], "instruction is empty"),
        (["generate", "--model", str(tmp_path / "none"), "hi"], "no folder"),
        (["generate", "--model", str(tiny_checkpoint), "hi"], "PyTorch checkpoint"),
        (["generate", "--model", model, "--device", "XPU", "hi"], "Unknown device"),
        (["generate", "--model", model, "word " * 2100], "prompt is"),
        (["generate", "hi"], "--model"),
        (["frobnicate"], "invalid choice"),
    ]
    for args, message in cases:
        p = run(*args)
        assert p.returncode == 2, (args, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1, (args, p.stderr)
        assert message in lines[0], (args, p.stderr)
        assert "Traceback" not in p.stderr


def test_devices_lists_cpu_and_auto():
    p = run("devices")
    assert p.returncode == 0
    ids = [line.split("\t")[0] for line in p.stdout.splitlines()]
    assert "CPU" in ids and ids[-1] == "AUTO"


def test_self_test(tiny_models, tmp_path):
    ok = run("--self-test", str(tiny_models["INT4"]))
    assert ok.returncode == 0, ok.stderr
    assert "self-test passed" in ok.stdout and "8 tokens" in ok.stdout
    bad = run("--self-test", str(tmp_path))
    assert bad.returncode == 2 and "not an OpenVINO model folder" in bad.stderr
