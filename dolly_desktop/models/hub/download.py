"""Download a model repository from the Hugging Face Hub, resumable mid-file.

huggingface-hub >= 1.18 deletes its `.incomplete` file when a transfer fails, so a cut at 5 of
5.7 GB starts over. Here huggingface-hub supplies what it is good at (the endpoint, the file list
with sizes and sha256, each file's HEAD, URLs, auth headers, offline mode) and the bytes come
through our own ranged GETs into `<name>.part` files in a persistent folder. A file is renamed
from `.part` only once its checksum matches; the model is installed (staged_folder) only once
every file is. Self-hosted mirrors that list no sizes or checksums and ignore Range work too
(see `_remote_file` and `_transfer`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from huggingface_hub import HfApi, constants, get_hf_file_metadata, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoSibling
from huggingface_hub.utils import build_hf_headers

from dolly_desktop.atomic import staged_folder
from dolly_desktop.errors import DollyError
from dolly_desktop.models.cancel import Cancelled, raise_if_cancelled
from dolly_desktop.models.capacity import DEFAULT_KEEP_FREE, check_disk, format_bytes
from dolly_desktop.models.hub.network import TRANSPORT_ERRORS, cannot_reach, client
from dolly_desktop.models.names import PART_SUFFIX, STATE_FILE, hub_file_name, inside

log = logging.getLogger(__name__)

READ_CHUNK = 8 << 20  # for checksums
_GIT_BLOB_ID = re.compile(r"[0-9a-f]{40}")
SKIPPED_FILES = {".gitattributes"}  # git plumbing, not part of the model
REPORT_EVERY_S = 0.1
# An answer that ends having brought less than this (and not the rest of the file) counts as a
# failed attempt, toward the retries: a mirror sending 1 byte per GET and hanging up once made
# 15,503 GETs in 60 s, each byte counted as progress.
MIN_ATTEMPT_BYTES = 1 << 20
# An answer bringing less than STALL_BYTES in STALL_S seconds is ended as stalled (a trickle
# keeps the read timeout from ever firing), and counts like any other failed attempt.
STALL_BYTES = 64 << 10
STALL_S = 60.0
MAX_FILE_BYTES = 1 << 40  # 1 TiB: Dolly's largest file is 23.8 GB; more is a broken listing


@dataclass(frozen=True)
class RemoteFile:
    name: str  # path inside the repo, "/"-separated
    size: int
    sha256: str | None  # LFS files: the Hub's checksum of the content
    blob_id: str | None  # other files: the git blob id (sha1 of "blob <size>\0" + content)

    @property
    def check(self) -> str:
        """What `_verify` holds the file to (the log says it for every file)."""
        return "sha256" if self.sha256 else "git blob id" if self.blob_id else "size only"


@dataclass(frozen=True)
class RepoListing:
    repo_id: str
    commit: str  # files are fetched at this commit, so a resume never mixes revisions
    files: tuple[RemoteFile, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class TransferProgress:
    stage: str  # "downloading" or "verifying"
    file: str
    done_bytes: int  # all files, including bytes kept from an earlier attempt
    total_bytes: int
    speed_bps: float  # over the last few seconds
    eta_s: float | None  # None until the speed is known

    @property
    def fraction(self) -> float:
        return self.done_bytes / self.total_bytes if self.total_bytes else 1.0


TransferCallback = Callable[[TransferProgress], None]


def hub_endpoint(endpoint: str | None = None) -> str:
    """The Hub to talk to: explicit, else HF_ENDPOINT as huggingface-hub read it at import."""
    return (endpoint or constants.ENDPOINT).rstrip("/")


def list_repo(
    repo_id: str,
    revision: str = "main",
    endpoint: str | None = None,
    token: str | bool | None = None,
) -> RepoListing:
    """The repo's commit and files with sizes and checksums, as the Hub (or a mirror) reports
    them. Always by revision: a mirror may answer `/api/models/{repo}/revision/main` only."""
    endpoint = hub_endpoint(endpoint)
    with _hub_errors(repo_id, endpoint, revision):
        info = HfApi(endpoint=endpoint, token=token).model_info(
            repo_id, revision=revision, files_metadata=True
        )
    siblings = [s for s in info.siblings or [] if s.rfilename not in SKIPPED_FILES]
    for s in siblings:  # every name, before any request about the files
        hub_file_name(s.rfilename, repo_id)
    if not info.sha or not siblings:
        raise DollyError(f"{repo_id} on {endpoint} reports no commit or no files.")
    with _hub_errors(repo_id, endpoint, revision):
        files = [_remote_file(s, repo_id, info.sha, endpoint, token) for s in siblings]
    return RepoListing(repo_id=repo_id, commit=info.sha, files=tuple(files))


def _remote_file(
    s: RepoSibling, repo_id: str, commit: str, endpoint: str, token: str | bool | None
) -> RemoteFile:
    """A listed file with its size and the best check there is for it.

    The Hub lists each size, with sha256 for LFS files and the git blob id for the rest. A bare
    mirror lists names only: the size then comes from the file's HEAD (X-Linked-Size, else
    Content-Length), and its ETag is taken for the git blob id only when the file is served as
    a plain git file (no redirect to LFS storage, a 40-hex ETag); anything else is checked by
    its size only. A blob id in such a listing is not trusted: without LFS data there it may be
    an LFS pointer's.
    """
    if s.lfs is not None:
        size = listed_size(s.lfs.size, s.rfilename, repo_id, endpoint)
        return RemoteFile(s.rfilename, size, s.lfs.sha256 or None, None)
    if s.size is not None:
        return RemoteFile(
            s.rfilename, listed_size(s.size, s.rfilename, repo_id, endpoint), None, s.blob_id
        )
    url = hf_hub_url(repo_id, s.rfilename, revision=commit, endpoint=endpoint)
    meta = get_hf_file_metadata(url, token=token, endpoint=endpoint, retry_on_errors=True)
    if meta.size is None:
        raise DollyError(
            f"{endpoint} gives the size of {s.rfilename} in {repo_id} neither in its listing "
            "nor for the file itself: it cannot be downloaded safely."
        )
    size = listed_size(meta.size, s.rfilename, repo_id, endpoint)
    plain = meta.location == url and _GIT_BLOB_ID.fullmatch(meta.etag or "") is not None
    return RemoteFile(s.rfilename, size, None, meta.etag if plain else None)


def listed_size(size: object, name: str, repo_id: str, endpoint: str) -> int:
    """A size a Hub (or a mirror) gives for a file: a whole number of bytes from 0 to 1 TiB
    (digits in a string too), else refused in one sentence before anything is fetched."""
    if isinstance(size, str) and size.isascii() and size.isdigit():
        size = int(size)
    if type(size) is not int or not 0 <= size <= MAX_FILE_BYTES:
        shown = repr(size) if len(repr(size)) <= 40 else repr(size)[:40] + "..."
        raise DollyError(
            f"{endpoint} lists {name} in {repo_id} with an impossible size ({shown}): "
            "nothing was downloaded."
        )
    return size


def partial_bytes(folder: Path) -> int:
    """Bytes already fetched into a partial download folder."""
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name != STATE_FILE)


def download_repo(
    repo_id: str,
    dest: Path,
    partial_dir: Path,
    *,
    revision: str = "main",
    endpoint: str | None = None,
    token: str | bool | None = None,
    check: Callable[[Path], object] | None = None,
    require: Callable[[RepoListing], object] | None = None,
    on_staged: Callable[[Path, RepoListing], None] | None = None,
    progress: TransferCallback | None = None,
    cancel: threading.Event | None = None,
    retries: int = 5,
    keep_free: int = DEFAULT_KEEP_FREE,
) -> Path:
    """Fetch `repo_id` into `partial_dir` (kept across runs for resuming), then install it at
    `dest` atomically after `check`. `require` may refuse the file list before any byte is
    fetched. Cancel keeps the partial files; `Cancelled` is raised."""
    endpoint = hub_endpoint(endpoint)
    if dest.exists():
        raise DollyError(f"{dest} already exists: remove it first to download it again.")
    listing = list_repo(repo_id, revision, endpoint, token)
    if require is not None:
        require(listing)
    same = _holds(partial_dir, listing)
    have = sum(_bytes_on_disk(partial_dir, f) for f in listing.files) if same else 0
    check_disk(dest.parent, listing.total_bytes - have, f"Downloading {repo_id}", keep_free)
    if not same:
        _start_afresh(partial_dir, listing)
    log.info(
        "downloading %s@%s from %s: %s, %s already here",
        repo_id,
        listing.commit,
        endpoint,
        format_bytes(listing.total_bytes),
        format_bytes(have),
    )
    meter = _Meter(listing.total_bytes, have, progress)
    headers = build_hf_headers(token=token)
    # Byte ranges count stored bytes: no transparent gzip, as huggingface-hub does too.
    headers["Accept-Encoding"] = "identity"
    with client() as http:
        for f in listing.files:
            url = hf_hub_url(repo_id, f.name, revision=listing.commit, endpoint=endpoint)
            _fetch_file(http, url, headers, f, partial_dir, meter, cancel, retries, repo_id)
    raise_if_cancelled(cancel)
    meter.stage("installing", "")
    try:
        with staged_folder(dest, check=check) as out:
            for f in listing.files:
                target = inside(out, out / f.name)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(partial_dir / f.name, target)
            if on_staged is not None:
                on_staged(out, listing)
    finally:
        # Installed, or moved into a staging folder that failed its check and is gone: either
        # way what is left of the partial folder is no use.
        shutil.rmtree(partial_dir, ignore_errors=True)
    return dest


def _state(listing: RepoListing) -> dict[str, str]:
    return {"repo_id": listing.repo_id, "commit": listing.commit}


def _holds(partial_dir: Path, listing: RepoListing) -> bool:
    """Partial files are kept only if they come from the same repo and commit."""
    try:
        return json.loads((partial_dir / STATE_FILE).read_text(encoding="utf-8")) == _state(listing)
    except (OSError, ValueError):
        return False


def _start_afresh(partial_dir: Path, listing: RepoListing) -> None:
    if partial_dir.exists():
        log.info("discarding partial download in %s (another commit)", partial_dir)
        shutil.rmtree(partial_dir)
    partial_dir.mkdir(parents=True)
    (partial_dir / STATE_FILE).write_text(json.dumps(_state(listing)), encoding="utf-8")


def _part(path: Path) -> Path:
    return path.with_name(path.name + PART_SUFFIX)


def _bytes_on_disk(folder: Path, f: RemoteFile) -> int:
    final, part = folder / f.name, _part(folder / f.name)
    if final.is_file():
        return final.stat().st_size
    return min(part.stat().st_size, f.size) if part.is_file() else 0


class _Unusable(Exception):
    """One answer that brought no usable bytes (too many, too few, cut): it counts against the
    retries, so that no misbehaving server keeps the download going round forever."""


def _fetch_file(
    http: httpx.Client,
    url: str,
    headers: dict[str, str],
    f: RemoteFile,
    folder: Path,
    meter: _Meter,
    cancel: threading.Event | None,
    retries: int,
    repo_id: str,
) -> None:
    final = inside(folder, folder / f.name)
    if final.is_file() and final.stat().st_size == f.size:
        return  # verified when it was renamed from .part
    final.parent.mkdir(parents=True, exist_ok=True)
    part = _part(final)
    failures = 0
    while (have := _size(part)) != f.size:
        raise_if_cancelled(cancel)
        if have > f.size:  # left by something else: not ours to trust
            meter.rewind(f.size)
            part.unlink()
            continue
        try:
            _transfer(http, url, headers, part, have, f, meter, cancel)
        except (httpx.TransportError, _Unusable) as e:  # cut, reset, timeout, wrong length
            raise_if_cancelled(cancel)
            # Resume from what arrived; but an answer that brought little counts as a failure,
            # or a server sending a byte at a time would keep the download going round forever.
            grew = _size(part) - have >= MIN_ATTEMPT_BYTES
            failures = 0 if grew else failures + 1
            if failures > retries:
                why = str(e) or type(e).__name__
                raise DollyError(
                    f"The download of {f.name} from {repo_id} keeps failing ({why}): check the "
                    "connection or the server, then download again to resume."
                ) from e
            log.warning(
                "transfer of %s failed at %d bytes (%s); trying again", f.name, _size(part), e
            )
            delay = 0.0 if grew else min(2.0**failures, 30.0)
            if cancel is not None and cancel.wait(delay):
                raise Cancelled() from None
            if cancel is None:
                time.sleep(delay)
    meter.stage("verifying", f.name)
    if not _verify(part, f, cancel):
        meter.rewind(f.size)
        part.unlink()
        raise DollyError(
            f"{f.name} from {repo_id} does not match the Hub's checksum: download it again."
        )
    log.info("%s: %s, checked by %s", f.name, format_bytes(f.size), f.check)
    os.replace(part, final)


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def _transfer(
    http: httpx.Client,
    url: str,
    headers: dict[str, str],
    part: Path,
    have: int,
    f: RemoteFile,
    meter: _Meter,
    cancel: threading.Event | None,
) -> None:
    """One GET from byte `have` on, appended to `part` until it holds the file's `f.size` bytes.

    Never more: an answer longer than promised (by the listing, or its own Content-Length) is
    refused before it is written, and what it brought is dropped."""
    req = dict(headers)
    if have:
        req["Range"] = f"bytes={have}-"
    meter.stage("downloading", f.name)
    with http.stream("GET", url, headers=req) as r:
        if r.status_code >= 400:
            why = r.headers.get("X-Error-Message") or r.reason_phrase
            raise DollyError(f"The Hub refused {f.name}: HTTP {r.status_code} {why}".rstrip())
        if have and r.status_code != 206:  # the server ignored the range: start over
            meter.rewind(have)
            have = 0
        elif have and not r.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
            raise DollyError(f"The server answered a resume of {f.name} with the wrong bytes.")
        due = f.size - have
        length = r.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > due:
            raise _Unusable(f"it sent {int(length):,} bytes where {due:,} were due")
        got = 0
        since, lately = time.monotonic(), 0  # a trickle: under STALL_BYTES in STALL_S
        with open(part, "ab" if have else "wb") as fh:
            for chunk in r.iter_raw():  # as it arrives: a cut loses nothing received
                raise_if_cancelled(cancel)
                if got + len(chunk) > due:
                    fh.truncate(have)
                    meter.rewind(got)
                    raise _Unusable(f"it sent more than the {due:,} bytes due")
                fh.write(chunk)
                got += len(chunk)
                meter.add(len(chunk))
                lately += len(chunk)
                now = time.monotonic()
                if lately >= STALL_BYTES:
                    since, lately = now, 0
                elif now - since > STALL_S and got < due:
                    raise _Unusable(f"it sent under {STALL_BYTES:,} bytes in {STALL_S:g} s")
        if got < due:  # ended early without an error: ask for the rest
            raise _Unusable(f"it sent {got:,} of {due:,} bytes")


def _verify(path: Path, f: RemoteFile, cancel: threading.Event | None) -> bool:
    """The Hub's own integrity data: sha256 for LFS files, the git blob id for the rest."""
    if path.stat().st_size != f.size:
        return False
    if f.sha256:
        h = hashlib.sha256()
    elif f.blob_id:
        h = hashlib.sha1(f"blob {f.size}\0".encode())
    else:
        return True  # nothing but the size to go by
    with open(path, "rb") as fh:
        while chunk := fh.read(READ_CHUNK):
            raise_if_cancelled(cancel)
            h.update(chunk)
    return h.hexdigest() == (f.sha256 or f.blob_id)


@contextmanager
def _hub_errors(repo_id: str, endpoint: str, revision: str) -> Iterator[None]:
    """Turn huggingface-hub and httpx failures into one sentence a person can act on."""
    try:
        yield
    except OfflineModeIsEnabled as e:
        raise DollyError(
            "Downloads are switched off (HF_HUB_OFFLINE is set): unset it to download."
        ) from e
    except GatedRepoError as e:
        raise DollyError(
            f"{repo_id} is gated: accept its terms on the Hub and log in (hf auth login)."
        ) from e
    except RepositoryNotFoundError as e:
        raise DollyError(f"There is no model {repo_id} on {endpoint} (or it is private).") from e
    except RevisionNotFoundError as e:
        raise DollyError(f"{repo_id} has no revision {revision!r} on {endpoint}.") from e
    except HfHubHTTPError as e:
        raise DollyError(f"{endpoint} refused {repo_id}: {str(e).splitlines()[0]}") from e
    except TRANSPORT_ERRORS as e:
        raise cannot_reach(endpoint, e) from e


class _Meter:
    """Bytes done, speed over a sliding window, ETA; reports at most every 0.1 s."""

    WINDOW_S = 5.0

    def __init__(self, total: int, done: int, callback: TransferCallback | None) -> None:
        self.total, self.done, self.callback = total, done, callback
        self.file, self._stage = "", "downloading"
        self.received = 0  # bytes over the wire in this run (speed ignores resumed bytes)
        self._samples: deque[tuple[float, int]] = deque([(time.monotonic(), 0)])
        self._last_report = 0.0

    def stage(self, stage: str, file: str) -> None:
        self._stage, self.file = stage, file
        self._report(force=True)

    def add(self, n: int) -> None:
        self.done += n
        self.received += n
        self._report()

    def rewind(self, n: int) -> None:
        self.done = max(0, self.done - n)

    def speed(self, now: float) -> float:
        self._samples.append((now, self.received))
        while len(self._samples) > 2 and now - self._samples[0][0] > self.WINDOW_S:
            self._samples.popleft()
        t0, b0 = self._samples[0]
        return (self.received - b0) / (now - t0) if now > t0 else 0.0

    def _report(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.callback is None or (not force and now - self._last_report < REPORT_EVERY_S):
            return
        self._last_report = now
        speed = self.speed(now)
        eta = (self.total - self.done) / speed if speed > 0 else None
        self.callback(TransferProgress(self._stage, self.file, self.done, self.total, speed, eta))
