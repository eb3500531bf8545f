"""The model store: listing and sizes, atomic installs, import, remove, NNCF compression,
the catalog, and the disk/memory checks (real checks against a threshold, no mocks)."""

from __future__ import annotations

import re
import shutil
import threading
import time
from pathlib import Path

import pytest
from hub_server import tree

from dolly_desktop.errors import DollyError
from dolly_desktop.generation.params import GenerationParams
from dolly_desktop.models import capacity
from dolly_desktop.models.cancel import Cancelled
from dolly_desktop.models.catalog import CATALOG, CHECKPOINT, get_model
from dolly_desktop.models.convert.compress import Int4Options
from dolly_desktop.models.folder import MODEL_BIN, Precision
from dolly_desktop.models.store import Store, detect_precision

NB = {"FP16": "FP16", "INT8": "INT8_compressed_weights", "INT4": "INT4_compressed_weights"}


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "models")


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _hidden(root: Path) -> list[Path]:
    """Staging or other leftovers anywhere in the store."""
    return [p for p in root.rglob(".*")] if root.exists() else []


def _notebook_layout(tiny_models: dict[str, Path], parent: Path) -> Path:
    nb = parent / "dolly-v2-3b"
    for precision, sub in NB.items():
        shutil.copytree(tiny_models[precision], nb / sub)
    return nb


def test_precision_is_detected_from_the_ir(tiny_models):
    for precision, folder in tiny_models.items():
        assert detect_precision(folder) == precision


def test_listing_sizes_and_compression_rate(store, tiny_models, report_figure):
    for folder in tiny_models.values():
        store.import_folder(folder, name="dolly-v2-3b")  # precision detected from the IR
    listed = {m.variant: m for m in store.list()}
    assert set(listed) == {"FP16", "INT8", "INT4"}
    for variant, m in listed.items():
        assert m.path == store.root / "dolly-v2-3b" / variant
        assert m.label == f"dolly-v2-3b/{variant}"
        assert m.size_bytes == _du(m.path) > m.weights_bytes
        assert m.weights_bytes == (tiny_models[variant] / MODEL_BIN).stat().st_size
        assert m.runnable and m.problem is None
        assert m.source == f"imported from {tiny_models[variant]}"
    fp16 = listed["FP16"].weights_bytes
    assert listed["FP16"].compression_rate is None
    for variant in ("INT8", "INT4"):
        rate = fp16 / listed[variant].weights_bytes
        assert listed[variant].compression_line == f"Compression rate: {rate:.3f}"
        report_figure(f"tiny {variant} vs FP16", listed[variant].compression_line)
    assert _hidden(store.root) == []


def test_damaged_folder_is_listed_with_its_problem(store, tiny_models):
    [m] = store.import_folder(tiny_models["INT4"], name="tiny")
    with open(m.path / MODEL_BIN, "r+b") as f:
        f.truncate(1000)
    [listed] = store.list()
    assert not listed.runnable and "truncated" in (listed.problem or "")


def test_import_refuses_a_broken_source_and_installs_nothing(store, tiny_models, tmp_path):
    src = shutil.copytree(tiny_models["INT8"], tmp_path / "broken")
    with open(src / MODEL_BIN, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(DollyError, match="truncated"):
        store.import_folder(src, name="tiny")
    assert store.list() == [] and _hidden(store.root) == []


def test_import_of_a_folder_without_weights_names_it_and_installs_nothing(
    store, tiny_models, tmp_path
):
    src = shutil.copytree(tiny_models["INT4"], tmp_path / "no-weights")
    (src / MODEL_BIN).unlink()
    with pytest.raises(DollyError, match=f"^{re.escape(str(src))} has no {MODEL_BIN}"):
        store.import_folder(src, name="tiny")
    assert store.list() == [] and _hidden(store.root) == []


def test_a_source_that_changes_while_it_is_copied_installs_nothing(store, tiny_models, tmp_path):
    # It passed the look before copying (a flaky disk, another program writing): only the check
    # of the copy, before it is renamed into place, keeps a broken model out of the store.
    src = shutil.copytree(tiny_models["INT4"], tmp_path / "changing")
    stages = []

    def progress(stage: str, fraction: float) -> None:
        if not stages:
            with open(src / MODEL_BIN, "r+b") as f:
                f.truncate(1000)
        stages.append(stage)

    with pytest.raises(DollyError, match=f"{MODEL_BIN} in .* is truncated"):
        store.import_folder(src, name="tiny", progress=progress)
    assert stages and stages[-1] == "copying"
    assert store.list() == [] and _hidden(store.root) == []
    assert not (store.root / "tiny" / "INT4").exists()


def test_cancelled_import_leaves_nothing(store, tiny_models):
    cancel = threading.Event()
    stages = []

    def progress(stage: str, fraction: float) -> None:
        stages.append(stage)
        cancel.set()  # at the first report, i.e. with the copy under way

    with pytest.raises(Cancelled):
        store.import_folder(tiny_models["INT4"], name="tiny", progress=progress, cancel=cancel)
    assert stages == ["copying"]
    assert store.list() == [] and _hidden(store.root) == []


def test_failed_check_keeps_what_was_installed(store, tiny_models):
    [m] = store.import_folder(tiny_models["INT4"], name="tiny")
    before = {p.name: p.stat().st_mtime_ns for p in m.path.iterdir()}
    with pytest.raises(DollyError, match="already installed"):
        store.import_folder(tiny_models["INT4"], name="tiny")
    assert {p.name: p.stat().st_mtime_ns for p in m.path.iterdir()} == before
    assert _hidden(store.root) == []


def test_import_of_the_notebook_layout(store, tiny_models, tmp_path):
    nb = _notebook_layout(tiny_models, tmp_path)
    plan = store.plan_import(nb)
    assert plan.kind == "notebook" and plan.name == "dolly-v2-3b"
    assert sorted(i.variant for i in plan.items) == ["FP16", "INT4", "INT8"]
    stages: list[tuple[str, float]] = []
    done = store.import_folder(nb, progress=lambda s, f: stages.append((s, f)))
    assert sorted(m.label for m in done) == [f"dolly-v2-3b/{p}" for p in ("FP16", "INT4", "INT8")]
    assert stages[-1] == ("done", 1.0)
    fractions = [f for _, f in stages]
    assert fractions == sorted(fractions)
    assert all(m.compression_rate for m in store.list() if m.variant != "FP16")

    with pytest.raises(DollyError, match="already installed"):
        store.import_folder(nb)
    store.remove("dolly-v2-3b", "INT8")  # only what is missing is imported again
    assert [m.label for m in store.import_folder(nb)] == ["dolly-v2-3b/INT8"]


def test_import_of_one_notebook_subfolder(store, tiny_models, tmp_path):
    nb = _notebook_layout(tiny_models, tmp_path)
    [m] = store.import_folder(nb / "INT4_compressed_weights")
    assert m.label == "dolly-v2-3b/INT4"


def test_a_checkpoint_is_for_export_not_import(store, tiny_checkpoint):
    plan = store.plan_import(tiny_checkpoint)
    assert plan.kind == "checkpoint" and plan.items == ()
    with pytest.raises(DollyError, match="export it"):
        store.import_folder(tiny_checkpoint)


def test_import_of_something_else(store, tmp_path):
    with pytest.raises(DollyError, match="not an OpenVINO model folder"):
        store.import_folder(tmp_path)
    with pytest.raises(DollyError, match="no folder"):
        store.import_folder(tmp_path / "none")


def test_remove_a_variant(store, tiny_models):
    store.import_folder(tiny_models["INT4"], name="tiny")
    store.import_folder(tiny_models["INT8"], name="tiny")
    store.remove("tiny", "INT8")
    assert [m.label for m in store.list()] == ["tiny/INT4"]
    store.remove("tiny", "INT4")
    assert store.list() == [] and list(store.root.iterdir()) == []
    with pytest.raises(DollyError, match="not installed"):
        store.remove("tiny", "INT4")
    store.import_folder(tiny_models["INT4"], name="tiny")
    before = tree(store.root)
    for name in ("../etc", "..", ".", "", "a/b", "/tmp", "x" * 101, ".downloads", "x\x00"):
        with pytest.raises(DollyError, match="cannot be a model name"):
            store.remove(name, "INT4")
    for variant in ("INT3", "..", ".", "", "INT4/..", "../INT4"):
        with pytest.raises(DollyError, match="Unknown variant"):
            store.remove("tiny", variant)
    assert tree(store.root) == before


def test_a_store_folder_that_leads_outside_the_store_is_not_removed(store, tiny_models, tmp_path):
    elsewhere = shutil.copytree(tiny_models["INT4"], tmp_path / "elsewhere" / "INT4")
    (store.root / "tiny").mkdir(parents=True)
    (store.root / "tiny" / "INT4").symlink_to(elsewhere)
    before = tree(tmp_path)
    with pytest.raises(DollyError, match=r"is not inside .*: refusing to delete or write it\.$"):
        store.remove("tiny", "INT4")
    assert tree(tmp_path) == before


def test_partial_download_names_are_repo_ids_only(store, tmp_path):
    kept = store.root / ".downloads" / "OpenVINO--dolly-v2-3b-int4-ov"
    kept.mkdir(parents=True)
    (kept / "openvino_model.bin.part").write_bytes(b"x" * 1000)
    (store.root / "tiny" / "INT4").mkdir(parents=True)
    before = tree(tmp_path)
    for repo in ("..", ".", "", "/", "../..", "a/../..", "a/b/c", "a--b", str(tmp_path), "a\\b"):
        with pytest.raises(DollyError, match=f"^{re.escape(repr(repo))} is not a Hub repo id"):
            store.discard_partial(repo)
    assert tree(tmp_path) == before
    store.discard_partial("OpenVINO/dolly-v2-3b-int4-ov")
    assert not kept.exists() and (store.root / "tiny" / "INT4").is_dir()


def test_a_downloads_folder_that_leads_outside_the_store_is_never_emptied(store, tmp_path):
    # `.downloads` a link to elsewhere: `models remove --partial` once deleted a folder there.
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "OpenVINO--dolly-v2-3b-int4-ov").mkdir(parents=True)
    (elsewhere / "OpenVINO--dolly-v2-3b-int4-ov" / "keep.txt").write_text("mine")
    store.root.mkdir(parents=True)
    (store.root / ".downloads").symlink_to(elsewhere)
    # and a partial folder that is itself a link, to a model inside the store
    (store.root / "tiny" / "INT4").mkdir(parents=True)
    (elsewhere / "OpenVINO--dolly-v2-3b-int8-ov").symlink_to(store.root / "tiny")
    before = tree(tmp_path)
    with pytest.raises(DollyError, match=r"is not inside .*: refusing to delete or write it\.$"):
        store.discard_partial("OpenVINO/dolly-v2-3b-int4-ov")
    with pytest.raises(DollyError, match=r"is not inside .*: refusing to delete or write it\.$"):
        store.download("dolly-v2-3b", "INT4", endpoint="http://127.0.0.1:9")
    (store.root / ".downloads").unlink()
    (store.root / ".downloads").mkdir()
    (store.root / ".downloads" / "OpenVINO--dolly-v2-3b-int8-ov").symlink_to(store.root / "tiny")
    before = tree(tmp_path)
    with pytest.raises(DollyError, match=r"is a link, not a partial download: refusing to use it"):
        store.discard_partial("OpenVINO/dolly-v2-3b-int8-ov")
    assert tree(tmp_path) == before


def test_cleanup_never_follows_a_link_out_of_the_store(store, tiny_models, tmp_path, caplog):
    # A model folder that is a link to elsewhere: start-up cleanup once deleted the staging-like
    # folders it found there.
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / ".INT4.partial-abc" / "inner").mkdir(parents=True)
    (elsewhere / ".INT4.partial-abc" / "inner" / "keep.txt").write_text("mine")
    (tmp_path / "other" / ".x.partial-1").mkdir(parents=True)
    store.root.mkdir(parents=True)
    (store.root / "linked").symlink_to(elsewhere)
    (store.root / ".y.partial-link").symlink_to(tmp_path / "other")
    (store.root / "tiny" / ".INT8.partial-link").mkdir(parents=True)

    def outside() -> dict:
        return {p: v for p, v in tree(tmp_path).items() if p.split("/")[0] != "models"}

    before = outside()
    with caplog.at_level("WARNING"):
        store.cleanup()
    assert outside() == before
    assert (store.root / "linked").is_symlink() and not (store.root / "tiny").exists()
    skipped = [r.getMessage() for r in caplog.records if "cleanup skipped" in r.getMessage()]
    assert len(skipped) == 2 and all(len(m.splitlines()) == 1 for m in skipped), skipped


def test_cleanup_removes_what_a_killed_job_left(store, tiny_models):
    store.import_folder(tiny_models["INT4"], name="tiny")
    stale = store.root / "tiny" / ".INT8.partial-abc123"
    (stale / "inner").mkdir(parents=True)
    (store.root / "other" / ".FP16.partial-x").mkdir(parents=True)
    store.cleanup()
    assert [m.label for m in store.list()] == ["tiny/INT4"]
    assert _hidden(store.root) == []
    assert not (store.root / "other").exists()


def test_compress_an_fp16_ir_with_nncf(store, tiny_models, report_figure):
    from dolly_desktop.generation.engines.local import Engine

    [fp16] = store.import_folder(tiny_models["FP16"], name="tiny")
    stages = []
    t0 = time.perf_counter()
    m = store.compress("tiny", Precision.INT4, progress=lambda s, f: stages.append(s))
    report_figure(
        "compress tiny FP16 IR -> INT4 (NNCF, in process)", f"{time.perf_counter() - t0:.1f} s"
    )
    assert stages == ["compressing", "checking", "done"]
    assert m.label == "tiny/INT4" and m.runnable
    assert detect_precision(m.path) == "INT4"
    assert m.weights_bytes < fp16.weights_bytes and m.size_bytes < fp16.size_bytes
    assert m.compression_rate == pytest.approx(fp16.weights_bytes / m.weights_bytes)
    assert m.source == "compressed from tiny/FP16 with NNCF"

    result = Engine(m.path).generate(
        "Who is Dolly?", GenerationParams(greedy=True, max_new_tokens=8)
    )
    assert result.generated_tokens > 0

    m8 = store.compress("tiny", Precision.INT8)
    assert detect_precision(m8.path) == "INT8" and m8.weights_bytes < fp16.weights_bytes


def test_compress_refusals(store, tiny_models):
    with pytest.raises(DollyError, match="tiny/FP16 is not installed"):
        store.compress("tiny", Precision.INT8)
    store.import_folder(tiny_models["FP16"], name="tiny")
    with pytest.raises(DollyError, match="not a compression"):
        store.compress("tiny", Precision.FP16)
    with pytest.raises(DollyError, match="memory"):
        store.compress("tiny", Precision.INT4, Int4Options(sym=True), available_memory=1000)
    assert [m.variant for m in store.list()] == ["FP16"]


def test_disk_check_is_real_and_refuses_with_figures(store, tiny_models, tmp_path):
    free = capacity.free_disk_bytes(tmp_path)
    capacity.check_disk(tmp_path, 1, "A tiny job", keep_free=0)  # fits
    with pytest.raises(DollyError) as e:
        capacity.check_disk(tmp_path / "not" / "made", free + capacity.GB, "A big job")
    msg = str(e.value)
    assert msg.startswith("A big job needs ") and "but only" in msg and msg.count(".") >= 2
    assert len(msg.splitlines()) == 1

    # Through the store: whatever it would copy, keeping all the free space free cannot fit.
    with pytest.raises(DollyError, match=r"Importing INT4 needs .* of disk space"):
        store.import_folder(tiny_models["INT4"], name="tiny", keep_free=free)
    assert store.list() == [] and _hidden(store.root) == []


def test_memory_check_refuses_with_figures(store, tiny_checkpoint):
    have = capacity.available_memory_bytes()
    assert have is not None and have > 0
    capacity.check_memory(1, "A tiny job")
    with pytest.raises(DollyError, match=r"needs about 5.00 GB of memory, but only 1.00 GB"):
        capacity.check_memory(5 * capacity.GB, "Exporting", available=capacity.GB)
    # The export's estimate against a machine with 1 MB free: refused before any work.
    with pytest.raises(DollyError, match="Exporting tiny-dolly to INT4 needs about"):
        store.export(tiny_checkpoint, Precision.INT4, available_memory=1_000_000)
    assert not store.root.exists() or list(store.root.iterdir()) == []


def test_catalog():
    assert list(CATALOG) == ["dolly-v2-3b", "dolly-v2-7b", "dolly-v2-12b"]
    ready = {v.repo_id for m in CATALOG.values() for v in m.variants if v.repo_id}
    assert ready == {
        "OpenVINO/dolly-v2-3b-int4-ov",
        "OpenVINO/dolly-v2-3b-int8-ov",
        "OpenVINO/dolly-v2-3b-fp16-ov",
        "OpenVINO/dolly-v2-7b-fp16-ov",
        "OpenVINO/dolly-v2-12b-int8-ov",
    }
    m3 = get_model("dolly-v2-3b")
    assert m3.source_repo == "databricks/dolly-v2-3b"
    int4 = m3.variant(Precision.INT4)
    assert int4.download_bytes == pytest.approx(1.57e9, rel=0.01)
    assert int4.run_ram_bytes == pytest.approx(3.2e9, rel=0.02)
    assert m3.export_ram_bytes == pytest.approx(7.6e9, rel=0.01)
    sizes = [m.checkpoint_bytes for m in CATALOG.values()]
    assert sizes == sorted(sizes) and sizes[-1] == pytest.approx(23.8e9)
    with pytest.raises(DollyError, match="choose one of dolly-v2-3b"):
        get_model("dolly-v3")


def test_catalog_download_without_a_ready_made_repo(store):
    with pytest.raises(DollyError, match=r"no ready-made INT4 of dolly-v2-7b.*databricks/dolly"):
        store.download("dolly-v2-7b", "INT4")
    assert store._catalog_repo("dolly-v2-7b", CHECKPOINT) == "databricks/dolly-v2-7b"


def test_checkpoint_names(store, tiny_checkpoint, tmp_path):
    assert store.resolve_checkpoint(str(tiny_checkpoint)) == tiny_checkpoint
    with pytest.raises(DollyError, match="no downloaded checkpoint"):
        store.resolve_checkpoint("dolly-v2-3b")
    shutil.copytree(tiny_checkpoint, store.path_for("dolly-v2-3b", CHECKPOINT))
    assert store.resolve_checkpoint("dolly-v2-3b") == store.path_for("dolly-v2-3b", CHECKPOINT)
    [m] = store.list()
    assert m.variant == CHECKPOINT and not m.runnable and m.problem is None
    assert Store.default_name(tmp_path / "x" / "my model!" / "INT4") == "my-model"
    for odd in ("+plus", "..", " ", "x" * 300, "ünï"):  # always a name the store takes
        assert (
            store.path_for(Store.default_name(tmp_path / odd), "INT4").parent.parent == store.root
        )
    with pytest.raises(DollyError, match="cannot be a model name"):
        store.plan_import(tiny_checkpoint, name="../x")
