"""The catalog learns from the Hub: the OpenVINO organisation's ready-made dolly-v2 repos with
their real sizes, kept in a cache file with the date they were fetched. Offline (or when the
Hub cannot be asked) the last cached list is used, and without one the built-in catalog.

A variant whose size came from the Hub is exact; the built-in sizes are estimates ("about").
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from dolly_desktop import paths
from dolly_desktop.models.catalog import CATALOG, RUN_OVERHEAD, TOKENIZER_BYTES, Variant
from dolly_desktop.models.download import hub_endpoint

log = logging.getLogger(__name__)

CACHE_FILE = "hub-catalog.json"
AUTHOR = "OpenVINO"
_REPO = re.compile(r"^OpenVINO/(dolly-v2-(?:3b|7b|12b))-(int4|int8|fp16)-ov$", re.IGNORECASE)


@dataclass(frozen=True)
class HubRepo:
    repo_id: str
    model: str  # dolly-v2-3b
    precision: str  # INT4, INT8, FP16
    size_bytes: int | None  # every file's size added up; None when the Hub did not say


@dataclass(frozen=True)
class HubCatalog:
    fetched: str  # when, ISO 8601
    endpoint: str
    repos: list[HubRepo]


def cache_path() -> Path:
    return paths.data_dir() / CACHE_FILE


def fetch(endpoint: str | None = None) -> HubCatalog:
    """Ask the Hub now (huggingface_hub raises if it cannot be reached or is offline)."""
    from huggingface_hub import HfApi

    base = hub_endpoint(endpoint)
    api = HfApi(endpoint=base)
    repos = []
    for info in api.list_models(author=AUTHOR, search="dolly-v2"):
        m = _REPO.match(info.id)
        if m is None:
            continue
        detail = api.model_info(info.id, files_metadata=True)
        sizes = [s.size for s in detail.siblings or []]
        size = sum(sizes) if sizes and None not in sizes else None  # type: ignore[arg-type]
        repos.append(HubRepo(info.id, m.group(1).lower(), m.group(2).upper(), size))
    return HubCatalog(time.strftime("%Y-%m-%dT%H:%M:%S%z"), base, repos)


def refresh(endpoint: str | None = None) -> HubCatalog:
    """Fetch and keep the result for when the Hub cannot be asked."""
    hub = fetch(endpoint)
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(hub), indent=1), encoding="utf-8")
    tmp.replace(path)
    log.info("hub catalog: %d dolly-v2 repos from %s", len(hub.repos), hub.endpoint)
    return hub


def cached() -> HubCatalog | None:
    try:
        data = json.loads(cache_path().read_text(encoding="utf-8"))
        return HubCatalog(data["fetched"], data["endpoint"], [HubRepo(**r) for r in data["repos"]])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def all_variants(hub: HubCatalog | None = None) -> list[Variant]:
    """Every catalog variant, with the Hub's repos and exact sizes where it has them (the
    cached list by default)."""
    hub = cached() if hub is None else hub
    known = {(r.model, r.precision): r for r in hub.repos} if hub else {}
    out = []
    for model in CATALOG.values():
        for v in model.variants:
            r = known.get((model.name, v.precision.value))
            if r is None:
                out.append(v)
                continue
            size = r.size_bytes
            ram = size - TOKENIZER_BYTES + RUN_OVERHEAD if size else v.run_ram_bytes
            out.append(
                replace(
                    v,
                    repo_id=r.repo_id,
                    download_bytes=size if size is not None else v.download_bytes,
                    run_ram_bytes=ram,
                    exact_size=size is not None,
                )
            )
    return out
