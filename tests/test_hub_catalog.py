"""The catalog learns from the Hub (a stand-in on 127.0.0.1): the OpenVINO organisation's
dolly-v2 repos with their real sizes, cached with the date, the built-in list offline."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hub_server import HubServer
from huggingface_hub import constants
from test_history import home_env

from dolly_desktop.models import hub_catalog
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
