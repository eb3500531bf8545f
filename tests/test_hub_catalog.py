"""The catalog learns from the Hub (a stand-in on 127.0.0.1): the OpenVINO organisation's
dolly-v2 repos with their real sizes, cached with the date, the built-in list offline."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time

import pytest
from hub_server import HubServer
from huggingface_hub import constants
from test_history import home_env

from dolly_desktop.errors import DollyError
from dolly_desktop.models.hub import catalog as hub_catalog
from dolly_desktop.models.hub.catalog import HubCatalog
from dolly_desktop.models.listing import list_models
from dolly_desktop.models.store import Store


def folder_bytes(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.fixture
def hub(tiny_models, monkeypatch, own_home):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with HubServer() as server:
        server.add_repo("OpenVINO/dolly-v2-3b-int4-ov", tiny_models["INT4"])
        server.add_repo("OpenVINO/dolly-v2-7b-int4-ov", tiny_models["INT4"])  # not built in
        server.add_repo("OpenVINO/some-other-model-ov", tiny_models["INT8"])
        server.add_repo("someone/dolly-v2-3b-int4-ov", tiny_models["INT8"])
        yield server


def test_the_hub_list_with_real_sizes_is_cached_and_used(hub, tiny_models):
    assert hub_catalog.cached() is None
    fetched = hub_catalog.refresh(hub.url)
    assert sorted(r.repo_id for r in fetched.repos) == [
        "OpenVINO/dolly-v2-3b-int4-ov",
        "OpenVINO/dolly-v2-7b-int4-ov",
    ]
    assert all(r.size_bytes == folder_bytes(tiny_models["INT4"]) for r in fetched.repos)
    assert hub_catalog.cached() == fetched  # kept, with its date, for when offline

    rows = {r.label: r for r in list_models(Store())}
    seven = rows["dolly-v2-7b/INT4"]
    assert seven.repo_id == "OpenVINO/dolly-v2-7b-int4-ov"  # learnt from the Hub
    assert seven.state() == "available to download"
    assert not seven.size_text().startswith("about")  # a real size
    assert rows["dolly-v2-7b/INT8"].size_text().startswith("about")  # still an estimate
    assert rows["dolly-v2-7b/INT8"].repo_id is None


def test_offline_the_cached_list_or_the_built_in_one(hub, monkeypatch, tmp_path):
    built_in = {v.label: v for v in hub_catalog.all_variants()}
    assert (
        built_in["dolly-v2-7b/INT4"].repo_id is None and not built_in["dolly-v2-7b/INT4"].exact_size
    )
    hub_catalog.refresh(hub.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(Exception):  # noqa: B017 - whatever huggingface_hub raises offline
        hub_catalog.refresh(hub.url)
    assert hub_catalog.all_variants() != list(built_in.values())  # the cached list stays


def test_models_list_available_refresh_on_the_command_line(hub, own_home):
    env = {k: v for k, v in home_env(own_home).items() if k != "HF_HUB_OFFLINE"}
    p = subprocess.run(
        [sys.executable, "-m", "dolly_desktop.cli", "models", "list", "--available",
         "--refresh", "--endpoint", hub.url],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("dolly-v2-7b/INT4"))
    assert "OpenVINO/dolly-v2-7b-int4-ov" in line and "~" not in line
    assert "From the Hub's list of" in p.stdout


def _cli(own_home, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in home_env(own_home).items() if k != "HF_HUB_OFFLINE"}
    return subprocess.run(
        [sys.executable, "-m", "dolly_desktop.cli", "models", "list", "--available", *args],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


def test_pages_are_followed_within_a_bound(hub):
    hub.page_size = 1  # the Hub's own Link: rel="next" pagination, one repo a page
    assert len(hub_catalog.refresh(hub.url).repos) == 2
    hub.endless_pages = True  # once: past 40 s and 897 requests, still going
    hub.requests.clear()
    t0 = time.monotonic()
    with pytest.raises(DollyError, match=r"keeps linking to more pages .*: its list was not used"):
        hub_catalog.refresh(hub.url)
    assert time.monotonic() - t0 < 10
    assert len([r for r in hub.requests if r.path == "/api/models"]) == hub_catalog.MAX_PAGES
    assert len(hub_catalog.cached().repos) == 2  # the list kept before stays


def test_an_endless_list_on_the_command_line_ends_with_one_line(hub, own_home):
    hub.endless_pages = True
    t0 = time.monotonic()
    p = _cli(own_home, "--refresh", "--endpoint", hub.url)
    assert time.monotonic() - t0 < 30
    assert p.returncode == 0, p.stderr
    [line] = p.stderr.strip().splitlines()
    assert line.startswith("dolly-desktop: the Hub's list was not refreshed: ") and "pages" in line
    assert "From the built-in list" in p.stdout


@pytest.mark.parametrize("size", [-(10**15), 2**70, "12", 1.5])
def test_impossible_sizes_are_not_kept_or_shown(hub, own_home, size):
    hub.list_size("OpenVINO/dolly-v2-7b-int4-ov", "openvino_model.bin", size)
    fetched = {r.repo_id: r for r in hub_catalog.refresh(hub.url).repos}
    assert fetched["OpenVINO/dolly-v2-7b-int4-ov"].size_bytes is None  # not said: estimated
    assert fetched["OpenVINO/dolly-v2-3b-int4-ov"].size_bytes > 0
    p = _cli(own_home)
    assert p.returncode == 0, p.stderr
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("dolly-v2-7b/INT4"))
    assert "OpenVINO/dolly-v2-7b-int4-ov" in line and " ~" in line and "-1" not in line


@pytest.mark.parametrize(
    "damage",
    [
        {"size_bytes": "5000"},
        {"model": ["dolly-v2-3b"]},
        {"size_bytes": -1000000 * 10**9},
        {"size_bytes": 10**30},
        {"precision": "INT8"},
        "not a repo",
    ],
)
def test_a_damaged_cache_is_no_cache_with_one_line_in_the_log(hub, own_home, caplog, damage):
    good = hub_catalog.refresh(hub.url)
    path = hub_catalog.cache_path()
    data = json.loads(path.read_text())
    data["repos"][0] = damage if isinstance(damage, str) else {**data["repos"][0], **damage}
    path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        assert hub_catalog.cached() is None and hub_catalog.cached() is None
        variants = hub_catalog.all_variants()
    told = [r.getMessage() for r in caplog.records if "hub catalog" in r.getMessage()]
    assert len(told) == 1 and "is unusable" in told[0] and len(told[0].splitlines()) == 1
    assert variants == hub_catalog.all_variants(HubCatalog("", "", []))  # the built-in list
    assert good.repos  # it was a real list before the damage
    p = _cli(own_home)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) <= 1
    assert "From the built-in list" in p.stdout and "-1000000" not in p.stdout


def test_a_hub_that_cannot_be_reached_is_one_sentence(own_home, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(DollyError, match=r"^Cannot reach 127\.0\.0\.1:9: .*set HF_ENDPOINT"):
        hub_catalog.refresh("http://127.0.0.1:9")
    assert hub_catalog.cached() is None
