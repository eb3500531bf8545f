"""`dolly-desktop models ...` and the child-process runner (core.jobs) end to end."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cli_runs import run_on_a_terminal as on_a_terminal
from hub_server import HubServer, tree
from huggingface_hub import constants

from dolly_desktop.errors import DollyError
from dolly_desktop.models.cancel import Cancelled
from dolly_desktop.models.capacity import format_bytes
from dolly_desktop.models.child import compress_job, export_job
from dolly_desktop.models.convert.compress import Int4Options
from dolly_desktop.models.folder import MODEL_BIN, Precision
from dolly_desktop.models.store import Store, detect_precision

INT4_REPO = "OpenVINO/dolly-v2-3b-int4-ov"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_ENDPOINT")}
    return {**env, **extra}


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dolly_desktop.cli", "models", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def _lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "models")


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".partial" in p.name] if root.exists() else []


def test_export_to_each_precision_through_the_child(store, tiny_checkpoint, report_figure):
    for precision in Precision:
        seen: list[tuple[str, float]] = []
        int4 = Int4Options(sym=True, group_size=64) if precision is Precision.INT4 else None
        job = export_job(
            store,
            tiny_checkpoint,
            precision,
            int4,
            "tiny",
            lambda s, f, seen=seen: seen.append((s, f)),
        )
        t0 = time.perf_counter()
        dest = job.run()
        elapsed = time.perf_counter() - t0
        report_figure(f"export tiny -> {precision.value} in a child", f"{elapsed:.1f} s")
        assert dest == store.path_for("tiny", precision.value)
        stages = [s for s, _ in seen]
        assert stages[0] == "preparing" and "converting" in stages and stages[-1] == "done"
        fractions = [f for _, f in seen]
        assert fractions == sorted(fractions) and fractions[-1] == 1.0
        m = store.get("tiny", precision.value)
        assert m.runnable and detect_precision(m.path) == precision.value
        assert m.source == f"exported from {tiny_checkpoint}"
    # The options reached the child: symmetric INT4 is stored as signed 4-bit.
    assert (
        b'element_type="i4"' in (store.path_for("tiny", "INT4") / "openvino_model.xml").read_bytes()
    )
    assert _leftovers(store.root) == []


def test_a_cancelled_export_leaves_nothing(store, tiny_checkpoint, report_figure):
    converting = threading.Event()
    staging_seen: list[Path] = []

    def progress(stage: str, fraction: float) -> None:
        if stage == "converting":
            staging_seen.extend(_leftovers(store.root))
            converting.set()

    job = export_job(store, tiny_checkpoint, Precision.INT4, name="tiny", progress=progress)
    cancelled_at: list[float] = []

    def cancel_when_converting() -> None:  # from another thread, as the GUI does
        if converting.wait(120):
            cancelled_at.append(time.perf_counter())
            job.cancel()

    job.start()
    canceller = threading.Thread(target=cancel_when_converting)
    canceller.start()
    with pytest.raises(Cancelled):
        job.wait()
    canceller.join()
    stopped = time.perf_counter() - cancelled_at[0]
    report_figure("cancel an export mid-conversion", f"{stopped:.2f} s from cancel() to clean")
    assert staging_seen, "the child should have been writing when it was killed"
    assert job._proc is not None and job._proc.returncode is not None
    assert not store.root.exists() or list(store.root.iterdir()) == []
    assert store.list() == []


def test_a_failed_child_reports_its_sentence(store, tiny_models, tmp_path):
    job = compress_job(store, "tiny", Precision.INT8)
    with pytest.raises(DollyError, match="tiny/FP16 is not installed"):
        job.run()

    store.import_folder(tiny_models["FP16"], name="tiny")
    stages: list[str] = []
    dest = compress_job(store, "tiny", Precision.INT8, progress=lambda s, f: stages.append(s)).run()
    assert stages == ["compressing", "checking", "done"]
    assert detect_precision(dest) == "INT8"


def test_import_list_remove(store, tiny_models, tmp_path):
    nb = tmp_path / "dolly-v2-3b"
    for precision, sub in (("FP16", "FP16"), ("INT8", "INT8_compressed_weights")):
        shutil.copytree(tiny_models[precision], nb / sub)
    s = ["--store", str(store.root)]

    p = run("import", str(nb), *s, "--json")
    assert p.returncode == 0, p.stderr
    lines = _lines(p.stdout)
    assert {line["stage"] for line in lines[:-1]} == {"copying"}
    fractions = [line["fraction"] for line in lines]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    last = lines[-1]
    assert last["stage"] == "done" and last["installed"] == ["dolly-v2-3b/FP16", "dolly-v2-3b/INT8"]
    assert last["path"] == str(store.path_for("dolly-v2-3b", "INT8"))

    p = run("list", *s)
    assert p.returncode == 0, p.stderr
    rows = p.stdout.splitlines()
    assert [r.split()[0] for r in rows] == ["dolly-v2-3b/FP16", "dolly-v2-3b/INT8"]
    assert "Compression rate: 1.9" in rows[1] and "Compression" not in rows[0]

    p = run("remove", "dolly-v2-3b/INT8", *s)
    assert p.returncode == 0 and "Removed dolly-v2-3b/INT8" in p.stderr
    assert [m.label for m in store.list()] == ["dolly-v2-3b/FP16"]

    # Neither --json nor a terminal (a pipe, a log): no progress at all, one line at the end.
    p = run("import", str(nb / "INT8_compressed_weights"), *s)
    assert p.returncode == 0, p.stderr
    assert p.stdout == ""
    assert p.stderr.splitlines() == [
        f"Installed dolly-v2-3b/INT8 ({format_bytes(store.get('dolly-v2-3b', 'INT8').size_bytes)}) "
        f"in {store.path_for('dolly-v2-3b', 'INT8')}"
    ]
    p = run("remove", "dolly-v2-3b/INT8", *s)
    assert p.returncode == 0

    p = run("list", "--available", *s)
    assert p.returncode == 0
    assert "dolly-v2-3b/FP16" in p.stdout and "(installed)" in p.stdout
    assert "OpenVINO/dolly-v2-12b-int8-ov" in p.stdout
    assert "export from databricks/dolly-v2-7b" in p.stdout


def run_on_a_terminal(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """`models ARGS` on a terminal 100 columns wide (cli_runs.run_on_a_terminal)."""
    return on_a_terminal("models", *args, env=env)


def test_a_person_at_a_terminal_sees_a_progress_bar(store, tiny_models, tmp_path):
    s = ["--store", str(store.root)]
    code, out, shown = run_on_a_terminal("import", str(tiny_models["FP16"]), "--name", "tiny", *s)
    assert code == 0, shown
    assert out == ""
    # The tiny copy is quick: its first report, then the end. Redrawn in place (\r), and
    # nothing else on the terminal but the last line (no JSON, no INFO log lines).
    lines = shown.replace("\r\n", "\n").split("\n")
    assert re.fullmatch(r"\rcopying: +\d+%\|.*\| \d\d:\d\d<.*\rdone: 100%\|█+\| .*", lines[0])
    m = store.get("tiny", "FP16")
    assert lines[1:] == [f"Installed tiny/FP16 ({format_bytes(m.size_bytes)}) in {m.path}", ""]

    code, out, shown = run_on_a_terminal("compress", "tiny", "--precision", "INT8", *s)
    assert code == 0, shown
    assert out == ""
    # NNCF draws its own table and bar on a terminal; ours goes through the stages around it.
    stages = r"compressing: +\d+%\|.*checking: +90%\|.*done: 100%\|█+\|"
    assert re.search(stages, shown, re.DOTALL) and '{"stage"' not in shown, shown
    m = store.get("tiny", "INT8")
    assert shown.endswith(f"\nInstalled tiny/INT8 ({format_bytes(m.size_bytes)}) in {m.path}\r\n")


def test_a_download_at_a_terminal_shows_bytes_speed_and_eta(store, tiny_models):
    with HubServer() as hub:
        hub.add_repo(INT4_REPO, tiny_models["INT4"])
        hub.throttle(INT4_REPO, MODEL_BIN, 20_000_000)  # under a second, a few redraws
        hub.cut_once(INT4_REPO, MODEL_BIN, 5_000_000)  # a warning, to be shown above the bar
        code, out, shown = run_on_a_terminal(
            "download", "dolly-v2-3b", "--store", str(store.root), env=_env(HF_ENDPOINT=hub.url)
        )
    assert code == 0, shown
    assert out == "" and '{"stage"' not in shown
    # e.g. "downloading openvino_model.bin:  40%|████      | 7.93M/19.7M [00:00<00:00, 19.2MB/s]"
    bar = r"downloading openvino_model.bin: +\d+%\|.*\| [\d.]+[kM]?/19.7M "
    assert re.search(bar + r"\[\d\d:\d\d<\d\d:\d\d, [\d.]+[kM]?B/s\]", shown), shown
    assert "\rdolly-desktop: transfer of openvino_model.bin failed at 5000000 bytes" in shown
    assert "Installed dolly-v2-3b/INT4" in shown


def test_import_of_a_checkpoint_exports_it(store, tiny_checkpoint):
    p = run(
        "import", str(tiny_checkpoint), "--precision", "INT8", "--store", str(store.root), "--json"
    )
    assert p.returncode == 0, p.stderr
    assert _lines(p.stdout)[-1]["installed"] == ["tiny-dolly/INT8"]


def test_download_honours_hf_endpoint_and_resumes_after_a_kill(store, tiny_models):
    with HubServer() as hub:
        hub.add_repo(INT4_REPO, tiny_models["INT4"])
        hub.throttle(INT4_REPO, MODEL_BIN, 4_000_000)
        env = _env(HF_ENDPOINT=hub.url)  # no --endpoint: the variable decides
        args = [sys.executable, "-m", "dolly_desktop.cli", "models", "download", "dolly-v2-3b"]
        args += ["--store", str(store.root)]
        part = store.root / ".downloads" / INT4_REPO.replace("/", "--") / (MODEL_BIN + ".part")
        child = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            while not (part.is_file() and part.stat().st_size > 2_000_000):
                assert time.monotonic() < deadline and child.poll() is None
                time.sleep(0.01)
        finally:
            child.kill()  # an interruption no code of ours sees: power cut, OOM killer
            child.communicate()
        kept = part.stat().st_size
        assert store.list() == []

        hub.throttle(INT4_REPO, MODEL_BIN, None)
        s = ["--store", str(store.root)]
        p = run("download", "dolly-v2-3b", "--precision", "INT4", *s, "--json", env=env)
        assert p.returncode == 0, p.stderr
        lines = _lines(p.stdout)
        assert lines[-1]["installed"] == ["dolly-v2-3b/INT4"]
        assert {"file", "done", "total", "speed", "eta"} <= set(lines[0])
        assert hub.gets(MODEL_BIN)[-1].range == f"bytes={kept}-"
        assert store.partial_downloads() == []

        p = run("download", "dolly-v2-3b", *s, "--keep-free", "1e6", env=env)
        assert p.returncode == 2 and "already exists" in p.stderr


def test_refusals_exit_2_with_one_line(store, tiny_checkpoint, tmp_path):
    s = ["--store", str(store.root)]
    ckpt = str(tiny_checkpoint)
    cases = [
        (["export", ckpt, *s, "--keep-free", "1e6"], "of disk space (keeping 1000000.00 GB free)"),
        (["export", str(tmp_path / "none"), *s], "There is no folder"),
        (["export", ckpt, "--precision", "INT3", *s], "Unknown precision"),
        (["export", ckpt, "--precision", "INT8", "--sym", *s], "apply to INT4 only"),
        (["export", ckpt, "--ratio", "2", *s], "INT4 ratio must be"),
        (["compress", "tiny", *s], "tiny/FP16 is not installed"),
        (["import", str(tmp_path), *s], "not an OpenVINO model folder"),
        (["remove", "dolly-v2-3b", *s], "Say which variant"),
        (["remove", "dolly-v2-3b/INT4", *s], "is not installed"),
        (["remove", INT4_REPO, "--partial", *s], "no partial download"),
        (["download", "dolly-v2-7b", "--precision", "INT4", *s], "no ready-made INT4"),
        (["download", "dolly-v9", *s], "Unknown model"),
        ([], "required"),
    ]
    for args, message in cases:
        p = run(*args)
        assert p.returncode == 2, (args, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, p.stderr)
        assert p.stdout == "", (args, p.stdout)
    assert not store.root.exists() or _leftovers(store.root) == []


def test_remove_partial_touches_nothing_but_a_partial_download(
    store, tiny_models, tmp_path, monkeypatch
):
    # A real partial download (the weights fail their checksum, the other files are kept) next
    # to an installed model: `..` once named the whole store, `.` every partial download.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    store.import_folder(tiny_models["INT8"], name="dolly-v2-3b")
    with HubServer() as hub:
        hub.add_repo(INT4_REPO, tiny_models["INT4"])
        hub.corrupt(INT4_REPO, MODEL_BIN)
        with pytest.raises(DollyError, match="does not match"):
            store.download("dolly-v2-3b", "INT4", endpoint=hub.url)
    [partial] = store.partial_downloads()
    assert partial.bytes_done > 0
    before = tree(tmp_path)
    s = ["--store", str(store.root)]
    for target in ("..", ".", "../..", "/"):
        p = run("remove", target, "--partial", *s)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1, (target, p.stderr)
        assert f"{target!r} is not a Hub repo id" in lines[0], (target, p.stderr)
        assert tree(tmp_path) == before, target
    p = run("remove", INT4_REPO, "--partial", *s)
    assert p.returncode == 0, p.stderr
    assert store.partial_downloads() == [] and [m.label for m in store.list()] == [
        "dolly-v2-3b/INT8"
    ]


def test_remove_partial_through_a_downloads_link_deletes_nothing_outside(store, tmp_path):
    # `.downloads` a link to a folder elsewhere that holds a folder of the partial's name.
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / INT4_REPO.replace("/", "--")).mkdir(parents=True)
    (elsewhere / INT4_REPO.replace("/", "--") / "keep.txt").write_text("mine")
    store.root.mkdir(parents=True)
    (store.root / ".downloads").symlink_to(elsewhere)
    before = tree(tmp_path)
    p = run("remove", INT4_REPO, "--partial", "--store", str(store.root))
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert "is not inside" in lines[0] and "refusing to delete or write it." in lines[0]
    assert tree(tmp_path) == before
