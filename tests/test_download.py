"""Downloads against a stand-in Hub on 127.0.0.1 (tests/hub_server.py): the tiny INT4 IR is
served as OpenVINO/dolly-v2-3b-int4-ov and the tiny checkpoint as databricks/dolly-v2-3b."""

from __future__ import annotations

import contextlib
import filecmp
import hashlib
import logging
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hub_server import HubServer, tree
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HfHubHTTPError

from dolly_desktop.errors import DollyError
from dolly_desktop.models import capacity
from dolly_desktop.models.cancel import Cancelled
from dolly_desktop.models.folder import MODEL_BIN
from dolly_desktop.models.hub import download
from dolly_desktop.models.hub.download import list_repo
from dolly_desktop.models.store import Store

INT4_REPO = "OpenVINO/dolly-v2-3b-int4-ov"
CKPT_REPO = "databricks/dolly-v2-3b"


@pytest.fixture
def online(monkeypatch):
    # conftest switches huggingface-hub offline for the session; these tests only ever talk to
    # the stand-in server on 127.0.0.1, passed explicitly as the endpoint.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def hub(online, tiny_models, tiny_checkpoint):
    with HubServer() as server:
        server.add_repo(INT4_REPO, tiny_models["INT4"])
        server.add_repo(CKPT_REPO, tiny_checkpoint)
        yield server


@pytest.fixture(params=["lfs-redirect", "lfs-direct"])
def bare_hub(request, online, tiny_models):
    """A self-hosted mirror that lists no sizes or checksums and ignores Range."""
    with HubServer(bare=True, lfs_redirect=request.param == "lfs-redirect") as server:
        server.add_repo(INT4_REPO, tiny_models["INT4"])
        yield server


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "models")


def _same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    return not mismatch and not errors


def _cancel_when(happened: Callable[[], bool], cancel: threading.Event) -> threading.Thread:
    """Set `cancel` from another thread (as the GUI would) once `happened()` is true."""

    def watch() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not cancel.is_set():
            if happened():
                cancel.set()
            time.sleep(0.005)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


@contextlib.contextmanager
def _largest_size(path: Path) -> Iterator[list[int]]:
    """The largest size `path` reaches while the block runs (polled every millisecond)."""
    largest = [0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.001):
            with contextlib.suppress(OSError):
                largest[0] = max(largest[0], path.stat().st_size)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        yield largest
    finally:
        stop.set()
        t.join()


def test_the_stand_in_behaves_like_the_hub_for_huggingface_hub(hub, tiny_models, tmp_path):
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    commit = hub.repos[INT4_REPO].commit
    for name in ("config.json", MODEL_BIN):  # a small file, and an LFS file behind a redirect
        url = hf_hub_url(INT4_REPO, name, endpoint=hub.url)
        meta = get_hf_file_metadata(url, endpoint=hub.url)
        assert meta.commit_hash == commit
        assert meta.size == (tiny_models["INT4"] / name).stat().st_size
        got = hf_hub_download(INT4_REPO, name, endpoint=hub.url, cache_dir=tmp_path / "hf")
        assert filecmp.cmp(got, tiny_models["INT4"] / name, shallow=False)


def test_listing_reports_checksums_and_sizes(hub, tiny_models):
    listing = list_repo(INT4_REPO, endpoint=hub.url)
    assert listing.commit == hub.repos[INT4_REPO].commit
    files = {f.name: f for f in listing.files}
    assert set(files) == {p.name for p in tiny_models["INT4"].iterdir()}
    assert files[MODEL_BIN].sha256 and not files[MODEL_BIN].blob_id  # LFS
    assert files["config.json"].blob_id and not files["config.json"].sha256
    assert listing.total_bytes == sum(p.stat().st_size for p in tiny_models["INT4"].iterdir())


def test_download_installs_a_catalog_variant(hub, store, tiny_models, report_figure):
    from dolly_desktop.generation.engines.local import Engine
    from dolly_desktop.generation.params import GenerationParams

    reports = []
    t0 = time.perf_counter()
    m = store.download("dolly-v2-3b", "INT4", endpoint=hub.url, progress=reports.append)
    elapsed = time.perf_counter() - t0
    report_figure("download tiny INT4 (19.7 MB) from 127.0.0.1", f"{elapsed:.2f} s")
    assert m.label == "dolly-v2-3b/INT4" and m.runnable
    assert m.source.startswith(f"{INT4_REPO}@{hub.repos[INT4_REPO].commit}")
    assert _same_files(tiny_models["INT4"], m.path)
    done = [r.done_bytes for r in reports]
    assert done == sorted(done) and reports[-1].done_bytes == reports[-1].total_bytes
    assert {r.stage for r in reports} == {"downloading", "verifying", "installing"}
    assert any(r.speed_bps > 0 and r.eta_s is not None for r in reports)
    assert store.partial_downloads() == []
    assert [p.name for p in store.root.iterdir()] == ["dolly-v2-3b"]  # .downloads is gone
    assert [p.name for p in m.path.parent.iterdir()] == ["INT4"]  # no staging left

    params = GenerationParams(greedy=True, max_new_tokens=6)
    assert Engine(m.path).generate("Who is Dolly?", params).generated_tokens > 0


def test_a_cut_transfer_resumes_mid_file(hub, store, report_figure):
    size = hub.repos[INT4_REPO].files[MODEL_BIN].size
    hub.cut_once(INT4_REPO, MODEL_BIN, 5_000_000)
    store.download("dolly-v2-3b", "INT4", endpoint=hub.url)
    gets = hub.gets(MODEL_BIN)
    assert [(g.status, g.range) for g in gets] == [(200, None), (206, "bytes=5000000-")]
    assert sum(g.sent for g in gets) == size  # not one byte fetched twice
    report_figure("cut at 5.0 MB of 13.4 MB", "resumed with Range bytes=5000000-, 0 bytes again")


def test_cancel_keeps_the_partial_file_and_the_next_run_resumes(hub, store, tiny_models):
    hub.throttle(INT4_REPO, MODEL_BIN, 8_000_000)  # ~1.7 s for the file: time to stop it
    cancel = threading.Event()
    part = store.root / ".downloads" / INT4_REPO.replace("/", "--") / (MODEL_BIN + ".part")
    watcher = _cancel_when(lambda: _size(part) >= 2_000_000, cancel)
    with pytest.raises(Cancelled):
        store.download("dolly-v2-3b", "INT4", endpoint=hub.url, cancel=cancel)
    watcher.join()
    assert store.list() == [] and not (store.root / "dolly-v2-3b").exists()
    [partial] = store.partial_downloads()
    kept = part.stat().st_size
    assert partial.repo_id == INT4_REPO and 2_000_000 <= kept < 13_000_000
    assert partial.bytes_done >= kept

    hub.throttle(INT4_REPO, MODEL_BIN, None)
    m = store.download("dolly-v2-3b", "INT4", endpoint=hub.url)
    assert hub.gets(MODEL_BIN)[-1].range == f"bytes={kept}-"
    assert _same_files(tiny_models["INT4"], m.path)
    assert store.partial_downloads() == []


def test_a_new_commit_discards_the_old_partial_files(hub, store, tiny_models):
    hub.throttle(INT4_REPO, MODEL_BIN, 8_000_000)
    cancel = threading.Event()
    part = store.root / ".downloads" / INT4_REPO.replace("/", "--") / (MODEL_BIN + ".part")
    _cancel_when(lambda: _size(part) >= 1_000_000, cancel)
    with pytest.raises(Cancelled):
        store.download("dolly-v2-3b", "INT4", endpoint=hub.url, cancel=cancel)
    hub.throttle(INT4_REPO, MODEL_BIN, None)
    hub.add_repo(INT4_REPO, tiny_models["INT4"])  # the repo moved on to a new commit
    store.download("dolly-v2-3b", "INT4", endpoint=hub.url)
    assert hub.gets(MODEL_BIN)[-1].range is None


@pytest.mark.parametrize("name", [MODEL_BIN, "config.json"])  # sha256, git blob id
def test_a_corrupt_file_is_refused_and_nothing_installed(hub, store, name):
    hub.corrupt(INT4_REPO, name)
    with pytest.raises(DollyError, match=f"{name} from {INT4_REPO} does not match the Hub"):
        store.download("dolly-v2-3b", "INT4", endpoint=hub.url)
    assert store.list() == []
    part = store.root / ".downloads" / INT4_REPO.replace("/", "--") / (name + ".part")
    assert not part.exists()  # the next run fetches that file afresh


@pytest.mark.parametrize(
    ("sent", "declared", "why"),
    [
        (3_000_000, True, "it sent 3,000,000 bytes where {size:,} were due"),  # from the headers
        (
            3_000_000,
            False,
            "it sent more than the {size:,} bytes due",
        ),  # cut off at the listed size
        (0, True, "it sent 0 of {size:,} bytes"),  # never a byte: no progress, no endless round
    ],
    ids=["more-declared", "more-undeclared", "nothing"],
)
def test_a_server_sending_a_wrong_length_fails_within_the_retries(hub, store, sent, declared, why):
    # 3 MB for a file listed at a few hundred bytes once drove an endless loop of GETs.
    name = "config.json"
    size = hub.repos[INT4_REPO].files[name].size
    hub.wrong_length(INT4_REPO, name, sent, declared)
    part = store.root / ".downloads" / INT4_REPO.replace("/", "--") / (name + ".part")
    reports = []
    cancel = threading.Event()  # a watchdog: the download must give up on its own, long before
    _cancel_when(lambda: len(hub.gets(name)) > 10, cancel)
    with _largest_size(part) as largest, pytest.raises(DollyError) as e:
        store.download(
            "dolly-v2-3b",
            "INT4",
            endpoint=hub.url,
            retries=2,
            progress=reports.append,
            cancel=cancel,
        )
    assert str(e.value).startswith(
        f"The download of {name} from {INT4_REPO} keeps failing ({why.format(size=size)})"
    )
    assert len(str(e.value).splitlines()) == 1
    assert len(hub.gets(name)) == 3  # retries + 1
    assert largest[0] <= size
    assert all(r.done_bytes <= r.total_bytes for r in reports)
    assert store.list() == []


def test_a_server_sending_a_byte_per_get_fails_within_the_retries(hub, store):
    # 1 byte per GET, then the line dropped: each byte once counted as progress and reset the
    # retries (15,503 GETs in 60 s for a 3.5 MB file, still going).
    hub.drip(INT4_REPO, MODEL_BIN, 1)
    size = hub.repos[INT4_REPO].files[MODEL_BIN].size
    cancel = threading.Event()  # the watchdog: the download must give up on its own first
    _cancel_when(lambda: len(hub.gets(MODEL_BIN)) > 10, cancel)
    with pytest.raises(DollyError) as e:
        store.download("dolly-v2-3b", "INT4", endpoint=hub.url, retries=2, cancel=cancel)
    assert str(e.value).startswith(f"The download of {MODEL_BIN} from {INT4_REPO} keeps failing (")
    assert len(str(e.value).splitlines()) == 1
    assert len(hub.gets(MODEL_BIN)) == 3  # retries + 1
    [partial] = store.partial_downloads()  # the bytes that came are kept for a resume
    assert partial.bytes_done < size and store.list() == []


def test_a_trickle_counts_as_a_stalled_attempt(hub, store, monkeypatch):
    # A server that keeps sending a little now and then never trips the read timeout: under
    # STALL_BYTES in STALL_S ends the answer, and such answers count toward the retries.
    monkeypatch.setattr(download, "STALL_BYTES", 1 << 20)
    monkeypatch.setattr(download, "STALL_S", 0.5)
    hub.throttle(INT4_REPO, MODEL_BIN, 64 * 1024)  # 64 KiB a second
    assert hub.repos[INT4_REPO].files[MODEL_BIN].size > 1 << 20
    cancel = threading.Event()
    t0 = time.monotonic()
    _cancel_when(lambda: len(hub.gets(MODEL_BIN)) > 5 or time.monotonic() - t0 > 20, cancel)
    with pytest.raises(
        DollyError, match=r"keeps failing \(it sent under 1,048,576 bytes in 0\.5 s\)"
    ):
        store.download("dolly-v2-3b", "INT4", endpoint=hub.url, retries=1, cancel=cancel)
    assert len(hub.gets(MODEL_BIN)) == 2 and time.monotonic() - t0 < 30
    assert store.list() == []


@pytest.mark.parametrize("size", [-1000, -1, 2**80, 1.5, "12x", True])
def test_a_listing_with_an_impossible_size_is_refused_in_one_sentence(hub, store, tmp_path, size):
    # A negative size once raised FileNotFoundError from deep in the download.
    hub.list_size(INT4_REPO, MODEL_BIN, size)
    before = tree(tmp_path)
    with pytest.raises(DollyError) as e:
        store.download("dolly-v2-3b", "INT4", endpoint=hub.url)
    assert str(e.value) == (
        f"{hub.url} lists {MODEL_BIN} in {INT4_REPO} with an impossible size ({size!r}): "
        "nothing was downloaded."
    )
    assert tree(tmp_path) == before
    assert not any("/resolve/" in r.path or "/cdn/" in r.path for r in hub.requests)


def test_a_repo_whose_files_match_but_make_no_model_installs_nothing(
    hub, store, tiny_models, tmp_path
):
    # Every checksum holds (the repo itself is broken): only the folder check stands between
    # these files and an installed model that cannot load.
    broken = shutil.copytree(tiny_models["INT4"], tmp_path / "broken")
    with open(broken / MODEL_BIN, "r+b") as f:
        f.truncate(1000)
    hub.add_repo(INT4_REPO, broken)
    with pytest.raises(DollyError, match=f"{MODEL_BIN} in .* is truncated"):
        store.download("dolly-v2-3b", "INT4", endpoint=hub.url)
    assert store.list() == [] and store.partial_downloads() == []
    assert not (store.root / "dolly-v2-3b" / "INT4").exists()
    assert [p for p in store.root.rglob("*") if p.is_file()] == []


def test_refused_when_the_disk_is_too_small(hub, store, tmp_path):
    free = capacity.free_disk_bytes(tmp_path)
    with pytest.raises(DollyError, match=r"Downloading .* needs 19.7 MB of disk space") as e:
        store.download("dolly-v2-3b", "INT4", endpoint=hub.url, keep_free=free)
    assert "but only" in str(e.value)
    assert hub.gets(MODEL_BIN) == [] and store.list() == [] and store.partial_downloads() == []


def test_the_checkpoint_downloads_as_a_checkpoint(hub, store, tiny_checkpoint):
    m = store.download("dolly-v2-3b", "PyTorch", endpoint=hub.url)
    assert m.label == "dolly-v2-3b/PyTorch" and m.problem is None and not m.runnable
    assert _same_files(tiny_checkpoint, m.path)
    assert store.resolve_checkpoint("dolly-v2-3b") == m.path


def test_errors_are_one_clear_sentence(hub, store, tiny_models, monkeypatch):
    cases = [
        (dict(name="x", variant="INT4", repo_id="nobody/nothing"), "There is no model nobody"),
        (dict(name="x", variant="INT4", repo_id=INT4_REPO, revision="v9"), "no revision 'v9'"),
        (dict(name="x", variant="INT4", repo_id=CKPT_REPO), "holds no OpenVINO model"),
        (dict(name="x", variant="PyTorch", repo_id=INT4_REPO), "holds no PyTorch checkpoint"),
    ]
    for kwargs, message in cases:
        with pytest.raises(DollyError, match=message):
            store.download(endpoint=hub.url, **kwargs)
    assert not any("/resolve/" in r.path for r in hub.requests)  # refused before any byte
    with pytest.raises(DollyError, match=r"^Cannot reach 127\.0\.0\.1:9: "):
        store.download("dolly-v2-3b", "INT4", endpoint="http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DollyError, match="HF_HUB_OFFLINE is set"):
        store.download("dolly-v2-3b", "INT4", endpoint=hub.url)
    assert store.list() == []

    store.import_folder(tiny_models["INT4"], name="dolly-v2-3b")
    n = len(hub.requests)
    with pytest.raises(DollyError, match="already exists"):
        store.download("dolly-v2-3b", "INT4", endpoint=hub.url)
    assert len(hub.requests) == n  # refused before asking the Hub anything


UNSAFE_NAMES = [
    "download.json",  # the partial download's own state
    "DOWNLOAD.json",  # the same file on a case-insensitive disk
    "dolly-desktop.json",  # the installed folder's record of its source
    "config.json.part",  # would pass for config.json still arriving
    "../x",
    "../../dolly-v2-3b/INT4/config.json",
    "a/../../x",
    "./x",
    "a//x",
    "..\\x",
    "x\x00y",
    "x\ny",
    "x" * 260,
]


@pytest.mark.parametrize("name", [*UNSAFE_NAMES, "ABSOLUTE"])
def test_a_listing_with_an_unsafe_name_is_refused_before_anything_is_written(
    hub, store, tiny_models, tmp_path, name
):
    if name == "ABSOLUTE":  # somewhere a test may write to if the refusal failed
        name = str(tmp_path / "escaped")
    hub.add_file(INT4_REPO, name, tiny_models["INT4"] / "config.json")
    before = tree(tmp_path)
    with pytest.raises(DollyError) as e:
        store.download("dolly-v2-3b", "INT4", endpoint=hub.url)
    assert str(e.value).startswith(f"{INT4_REPO} lists a file with an unsafe name, {name!r} (")
    assert len(str(e.value).splitlines()) == 1
    assert tree(tmp_path) == before
    assert not any("/resolve/" in r.path or "/cdn/" in r.path for r in hub.requests)


def test_a_bare_mirror_gives_sizes_file_by_file_and_the_best_check_there_is(bare_hub, tiny_models):
    api = HfApi(endpoint=bare_hub.url)
    info = api.model_info(INT4_REPO, revision="main", files_metadata=True)
    assert info.siblings and all(s.size is None and s.lfs is None for s in info.siblings)
    with pytest.raises(HfHubHTTPError):  # only with a revision, as some mirrors
        api.model_info(INT4_REPO, files_metadata=True)

    listing = list_repo(INT4_REPO, endpoint=bare_hub.url)
    files = {f.name: f for f in listing.files}
    assert set(files) == {p.name for p in tiny_models["INT4"].iterdir()}
    for p in tiny_models["INT4"].iterdir():
        f = files[p.name]
        assert f.size == p.stat().st_size and f.sha256 is None
        if p.suffix == ".bin":  # LFS: the listing's blob id would be the pointer's
            assert f.check == "size only" and f.blob_id is None
        else:
            data = p.read_bytes()
            assert f.blob_id == hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    assert listing.total_bytes == sum(p.stat().st_size for p in tiny_models["INT4"].iterdir())


def test_download_and_resume_through_a_bare_mirror(bare_hub, store, tiny_models, caplog):
    caplog.set_level(logging.INFO, logger="dolly_desktop.models.hub.download")
    size = bare_hub.repos[INT4_REPO].files[MODEL_BIN].size
    part = store.root / ".downloads" / INT4_REPO.replace("/", "--") / (MODEL_BIN + ".part")
    bare_hub.throttle(INT4_REPO, MODEL_BIN, 8_000_000)
    cancel = threading.Event()
    _cancel_when(lambda: _size(part) >= 2_000_000, cancel)
    with pytest.raises(Cancelled):  # stopped mid-file
        store.download("dolly-v2-3b", "INT4", endpoint=bare_hub.url, cancel=cancel)
    kept = _size(part)
    assert 2_000_000 <= kept < size

    # Run again: the ranged GET is answered with the whole file, which is cut at 1 MB; the
    # next attempt gets the whole file again. Each answer is written from byte 0.
    bare_hub.throttle(INT4_REPO, MODEL_BIN, None)
    bare_hub.cut_once(INT4_REPO, MODEL_BIN, 1_000_000)
    with _largest_size(part) as largest:
        m = store.download("dolly-v2-3b", "INT4", endpoint=bare_hub.url)
    assert _same_files(tiny_models["INT4"], m.path)
    gets = [(g.status, g.range, g.sent) for g in bare_hub.gets(MODEL_BIN)]
    assert gets[1:] == [(200, f"bytes={kept}-", 1_000_000), (200, "bytes=1000000-", size)]
    assert largest[0] <= size
    checked = dict(
        re.fullmatch(r"(.+): .+, checked by (.+)", r.getMessage()).groups()
        for r in caplog.records
        if "checked by" in r.getMessage()
    )
    assert checked[MODEL_BIN] == "size only" and checked["config.json"] == "git blob id"
    assert set(checked) == {p.name for p in tiny_models["INT4"].iterdir()}
