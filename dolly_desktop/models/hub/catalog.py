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
from urllib.parse import quote, urlencode, urljoin

import httpx

from dolly_desktop import paths
from dolly_desktop.errors import DollyError
from dolly_desktop.models.catalog import CATALOG, RUN_OVERHEAD, TOKENIZER_BYTES, Variant
from dolly_desktop.models.hub.download import MAX_FILE_BYTES, hub_endpoint
from dolly_desktop.models.hub.network import TRANSPORT_ERRORS, cannot_reach, client

log = logging.getLogger(__name__)

CACHE_FILE = "hub-catalog.json"
AUTHOR = "OpenVINO"
_REPO = re.compile(r"^OpenVINO/(dolly-v2-(?:3b|7b|12b))-(int4|int8|fp16)-ov$", re.IGNORECASE)
# Bounds on asking a Hub (or a mirror) for its list: the OpenVINO organisation's dolly-v2 repos
# fit one page; an `/api/models` that always links to a next page once kept a refresh going
# past 40 s and 897 requests.
MAX_PAGES = 10
MAX_ANSWER_BYTES = 4 << 20  # one page, or one repo's file list
FETCH_DEADLINE_S = 30.0  # the whole refresh
TIMEOUT = httpx.Timeout(10.0)  # each request
MAX_REPO_BYTES = MAX_FILE_BYTES  # 1 TiB: more (or less than a byte) is not a size


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
    """Ask the Hub now, within MAX_PAGES pages and FETCH_DEADLINE_S seconds; any failure is
    one sentence (DollyError)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers

    base = hub_endpoint(endpoint)
    if constants.HF_HUB_OFFLINE:
        raise DollyError("The Hub's list cannot be fetched: HF_HUB_OFFLINE is set.")
    deadline = time.monotonic() + FETCH_DEADLINE_S
    headers = build_hf_headers()
    try:
        with client() as http:
            http.timeout = TIMEOUT
            ids = _list_ids(http, base, headers, deadline)
            repos = [_repo(http, base, rid, headers, deadline) for rid in ids]
    except TRANSPORT_ERRORS as e:
        raise cannot_reach(base, e) from e
    return HubCatalog(time.strftime("%Y-%m-%dT%H:%M:%S%z"), base, repos)


def _list_ids(http: httpx.Client, base: str, headers: dict[str, str], deadline: float) -> list[str]:
    """The ids of the OpenVINO dolly-v2 repos, page after page as the Hub links them."""
    url: str | None = f"{base}/api/models?" + urlencode({"author": AUTHOR, "search": "dolly-v2"})
    ids: dict[str, None] = {}
    for _ in range(MAX_PAGES):
        assert url is not None
        page, links = _get_json(http, url, headers, deadline, base, "its list of models")
        if not isinstance(page, list):
            raise DollyError(f"{base} answered its list of models with something else.")
        for item in page:
            rid = item.get("id") if isinstance(item, dict) else None
            if isinstance(rid, str) and _REPO.match(rid):
                ids[rid] = None
        nxt = links.get("next", {}).get("url")
        if not nxt:
            return list(ids)
        url = urljoin(url, nxt)
    raise DollyError(
        f"{base} keeps linking to more pages of its list of models (over {MAX_PAGES}): "
        "its list was not used."
    )


def _repo(
    http: httpx.Client, base: str, repo_id: str, headers: dict[str, str], deadline: float
) -> HubRepo:
    """One repo with every file's size added up; None when a size is missing or impossible."""
    m = _REPO.match(repo_id)
    assert m is not None
    url = f"{base}/api/models/{quote(repo_id)}/revision/main?blobs=true"
    info, _ = _get_json(http, url, headers, deadline, base, repo_id)
    siblings = info.get("siblings") if isinstance(info, dict) else None
    sizes = []
    for s in siblings if isinstance(siblings, list) else []:
        lfs = s.get("lfs") if isinstance(s, dict) else None
        size = (
            lfs.get("size")
            if isinstance(lfs, dict)
            else s.get("size")
            if isinstance(s, dict)
            else None
        )
        sizes.append(size)
    size: int | None = None
    if sizes and None not in sizes:
        if all(type(n) is int and n >= 0 for n in sizes) and _plausible(sum(sizes)):
            size = sum(sizes)
        else:
            log.warning("hub catalog: %s lists impossible file sizes for %s", base, repo_id)
    return HubRepo(repo_id, m.group(1).lower(), m.group(2).upper(), size)


def _plausible(size: object) -> bool:
    return type(size) is int and 0 < size <= MAX_REPO_BYTES


def _get_json(
    http: httpx.Client,
    url: str,
    headers: dict[str, str],
    deadline: float,
    base: str,
    what: str,
) -> tuple[object, dict]:
    """One JSON answer and its Link header, within MAX_ANSWER_BYTES and the deadline."""
    late = DollyError(f"{base} took over {FETCH_DEADLINE_S:g} s to give {what}: not used.")
    if time.monotonic() > deadline:
        raise late
    with http.stream("GET", url, headers=headers) as r:
        if r.status_code >= 400:
            why = r.headers.get("X-Error-Message") or r.reason_phrase
            raise DollyError(f"{base} refused {what}: HTTP {r.status_code} {why}".rstrip() + ".")
        body = bytearray()
        for chunk in r.iter_bytes():
            body += chunk
            if len(body) > MAX_ANSWER_BYTES:
                raise DollyError(f"{base} sent more than {MAX_ANSWER_BYTES:,} bytes for {what}.")
            if time.monotonic() > deadline:
                raise late
        try:
            return json.loads(body), r.links
        except ValueError:
            raise DollyError(f"{base} answered {what} with something that is not JSON.") from None


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


_told: set[tuple[str, int]] = set()  # unusable cache files already named in the log


def cached() -> HubCatalog | None:
    """The list kept by `refresh`; None when there is none, or when it is unusable (damaged,
    or not what this version writes): that is said once in the log."""
    path = cache_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        return _unusable(path, str(e))
    try:
        return _from_json(json.loads(text))
    except (ValueError, KeyError, TypeError) as e:
        return _unusable(path, str(e) or type(e).__name__)


def _unusable(path: Path, why: str) -> None:
    try:
        key = (str(path), path.stat().st_mtime_ns)
    except OSError:
        key = (str(path), 0)
    if key not in _told:
        _told.add(key)
        log.warning("hub catalog: %s is unusable (%s): the built-in list is used", path, why)
    return None


def _from_json(data: object) -> HubCatalog:
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    fetched, endpoint, repos = data["fetched"], data["endpoint"], data["repos"]
    if not isinstance(fetched, str) or not isinstance(endpoint, str) or not isinstance(repos, list):
        raise ValueError("fetched, endpoint or repos of the wrong kind")
    out = []
    for r in repos:
        if not isinstance(r, dict) or set(r) != {"repo_id", "model", "precision", "size_bytes"}:
            raise ValueError(f"a repo that is not one: {str(r)[:60]}")
        rid, size = r["repo_id"], r["size_bytes"]
        m = _REPO.match(rid) if isinstance(rid, str) else None
        if m is None or (r["model"], r["precision"]) != (m.group(1).lower(), m.group(2).upper()):
            raise ValueError(f"repo {str(rid)[:60]!r} with model or precision not its own")
        if size is not None and not _plausible(size):
            raise ValueError(f"repo {rid} with an impossible size ({str(size)[:30]})")
        out.append(HubRepo(rid, r["model"], r["precision"], size))
    return HubCatalog(fetched, endpoint, out)


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
