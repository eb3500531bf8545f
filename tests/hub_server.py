"""A stand-in Hugging Face Hub on 127.0.0.1: serves local folders the way the Hub does.

- GET /api/models/{repo}[/revision/{rev}]: id, sha (commit) and siblings with size, blobId and,
  for LFS files, lfs {size, sha256, pointerSize}; unknown repo/revision answered with the
  Hub's X-Error-Code so huggingface-hub raises its own error types.
- HEAD/GET /{repo}/resolve/{rev}/{file}: small files served directly with X-Repo-Commit and
  ETag (the git blob id); LFS files redirected (302, absolute URL, X-Linked-Etag and
  X-Linked-Size) to /cdn/..., which serves the bytes with Range support, as the Hub's CDN does.
- `HubServer(bare=True)` is a self-hosted mirror as some are: the listing gives names and blob
  ids but no sizes and no LFS data, `/api/models/{repo}` without a revision fails (with one it
  works), and Range is ignored (200 with the whole file). LFS files redirect with X-Linked-Size
  but no X-Linked-Etag (the ETag is the pointer's blob id); `lfs_redirect=False` serves them
  directly instead.
- Faults for tests: `cut_once` drops the connection after N bytes of one GET of a file;
  `corrupt` flips a byte of a file as served; `throttle` makes a file arrive slowly (a slow
  line, so that a test can stop a transfer halfway); `wrong_length` answers every GET of a
  file with another number of bytes than it lists, saying so in Content-Length or not;
  `drip` answers every GET of a file with a few bytes, then hangs up; `list_size` lists a file
  with another size (negative, huge, a string); `endless_pages` makes `/api/models` always link
  to a next page (`page_size` splits a listing into pages linked as the Hub links them).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".bin", ".safetensors")
SEND_CHUNK = 64 * 1024


@dataclass
class _File:
    path: Path
    size: int
    blob_id: str
    sha256: str | None  # LFS files only
    pointer_size: int = 0


@dataclass
class _Repo:
    commit: str
    files: dict[str, _File] = field(default_factory=dict)


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    status: int = 0
    sent: int = 0  # body bytes sent


def tree(root: Path) -> dict[str, tuple[bool, int, int]]:
    """Every entry under `root` (is it a folder, size, mtime): what a refusal must leave alone.
    Tests of downloads share it, so it lives with the stand-in Hub."""
    return {
        p.relative_to(root).as_posix(): (p.is_dir(), p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in root.rglob("*")
    }


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _describe(p: Path) -> _File:
    """A file as the Hub keeps it: LFS (sha256 and a pointer) by suffix, else a git blob."""
    data = p.read_bytes()
    if p.suffix not in LFS_SUFFIXES:
        return _File(p, len(data), _git_blob_id(data), None)
    sha = hashlib.sha256(data).hexdigest()
    pointer = (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n"
    ).encode()
    return _File(p, len(data), _git_blob_id(pointer), sha, len(pointer))


class HubServer:
    def __init__(self, bare: bool = False, lfs_redirect: bool = True) -> None:
        self.bare, self.lfs_redirect = bare, lfs_redirect
        self.repos: dict[str, _Repo] = {}
        self.requests: list[Request] = []
        self._cuts: dict[tuple[str, str], int] = {}
        self._corrupt: set[tuple[str, str]] = set()
        self._rates: dict[tuple[str, str], float] = {}
        self._lengths: dict[tuple[str, str], tuple[int, bool]] = {}
        self._drips: dict[tuple[str, str], int] = {}
        self._listed_sizes: dict[tuple[str, str], object] = {}
        self.endless_pages = False
        self.page_size = 1000
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def add_repo(self, repo_id: str, folder: Path, commit: str | None = None) -> str:
        """Serve every file under `folder` as `repo_id`; return the commit id."""
        repo = _Repo(commit or uuid.uuid4().hex + uuid.uuid4().hex[:8])
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                repo.files[p.relative_to(folder).as_posix()] = _describe(p)
        self.repos[repo_id] = repo
        return repo.commit

    def add_file(self, repo_id: str, name: str, source: Path) -> None:
        """List `source` as `name` in the repo: any name, also one no folder could hold."""
        self.repos[repo_id].files[name] = _describe(source)

    def cut_once(self, repo_id: str, filename: str, after_bytes: int) -> None:
        """The next GET of this file sends `after_bytes` of its body, then drops the line."""
        self._cuts[(repo_id, filename)] = after_bytes

    def corrupt(self, repo_id: str, filename: str) -> None:
        self._corrupt.add((repo_id, filename))

    def throttle(self, repo_id: str, filename: str, bytes_per_s: float | None) -> None:
        if bytes_per_s is None:
            self._rates.pop((repo_id, filename), None)
        else:
            self._rates[(repo_id, filename)] = bytes_per_s

    def wrong_length(self, repo_id: str, filename: str, total: int, declared: bool = True) -> None:
        """Every GET of this file sends `total` bytes (the file, cut there or followed by zeros):
        with a Content-Length that says so (`declared`), or none and the connection closed."""
        self._lengths[(repo_id, filename)] = (total, declared)

    def drip(self, repo_id: str, filename: str, nbytes: int) -> None:
        """Every GET of this file sends its next `nbytes` (Content-Length saying the rest), then
        hangs up: a mirror that never refuses and never gets anywhere."""
        self._drips[(repo_id, filename)] = nbytes

    def list_size(self, repo_id: str, filename: str, size: object) -> None:
        """The listing gives this as the file's size (and its LFS size), whatever it is."""
        self._listed_sizes[(repo_id, filename)] = size

    def gets(self, filename: str) -> list[Request]:
        """Byte-serving GETs of a file (the CDN for LFS files), in order."""
        return [
            r
            for r in self.requests
            if r.method == "GET" and r.path.endswith("/" + filename) and r.status in (200, 206)
        ]


_API = re.compile(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?$")
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_CDN = re.compile(r"^/cdn/([^/]+/[^/]+)/([0-9a-f]+)/(.+)$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


def _make_handler(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the Hub: the client reuses connections

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self._route(body=False)

        def do_GET(self) -> None:
            self._route(body=True)

        def _route(self, body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            self.req = Request(self.command, path, self.headers.get("Range"))
            with hub._lock:
                hub.requests.append(self.req)
            if path == "/api/models":  # a listing, as HfApi.list_models asks for it
                self._list(parse_qs(urlsplit(self.path).query))
            elif m := _API.match(path):
                if hub.bare and m.group(2) is None:
                    self._error(500, "", "Internal Server Error")
                else:
                    self._api(m.group(1), m.group(2) or "main")
            elif m := _RESOLVE.match(path):
                self._resolve(m.group(1), m.group(2), m.group(3), body)
            elif m := _CDN.match(path):
                self._bytes(m.group(1), m.group(2), m.group(3), body)
            else:
                self._error(404, "EntryNotFound", "not found")

        def _list(self, query: dict[str, list[str]]) -> None:
            author = (query.get("author") or [""])[0]
            search = (query.get("search") or [""])[0].lower()
            found = [
                {"id": rid, "modelId": rid, "private": False}
                for rid in hub.repos
                if rid.startswith(f"{author}/") and search in rid.lower()
            ]
            page = int((query.get("cursor") or ["0"])[0])
            start = page * hub.page_size
            payload = json.dumps(found[start : start + hub.page_size]).encode()
            self.req.status = 200
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            if hub.endless_pages or start + hub.page_size < len(found):
                nxt = f"{hub.url}/api/models?author={author}&search={search}&cursor={page + 1}"
                self.send_header("Link", f'<{nxt}>; rel="next"')
            self.end_headers()
            self.wfile.write(payload)

        def _repo(self, repo_id: str, rev: str) -> _Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(401, "RepoNotFound", f"Repository {repo_id} not found")
            elif rev not in ("main", repo.commit):
                self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            else:
                return repo
            return None

        def _api(self, repo_id: str, rev: str) -> None:
            repo = self._repo(repo_id, rev)
            if repo is None:
                return
            siblings = []
            for name, f in repo.files.items():
                s: dict = {"rfilename": name, "blobId": f.blob_id}
                if hub.bare:
                    siblings.append(s)
                    continue
                size = hub._listed_sizes.get((repo_id, name), f.size)
                s["size"] = size
                if f.sha256:
                    s["lfs"] = {"size": size, "sha256": f.sha256, "pointerSize": f.pointer_size}
                siblings.append(s)
            data = {"id": repo_id, "modelId": repo_id, "sha": repo.commit, "private": False}
            self._json(200, {**data, "siblings": siblings})

        def _resolve(self, repo_id: str, rev: str, name: str, body: bool) -> None:
            repo = self._repo(repo_id, rev)
            if repo is None:
                return
            f = repo.files.get(name)
            if f is None:
                self._error(404, "EntryNotFound", f"{name} does not exist")
                return
            if f.sha256 and hub.lfs_redirect:  # LFS: to the CDN, with the file's real metadata
                self.req.status = 302
                self.send_response(302)
                self.send_header("Location", f"{hub.url}/cdn/{repo_id}/{repo.commit}/{name}")
                self.send_header("X-Repo-Commit", repo.commit)
                if not hub.bare:  # a mirror without sha256 has none to give
                    self.send_header("X-Linked-Etag", f'"{f.sha256}"')
                self.send_header("X-Linked-Size", str(f.size))
                self.send_header("ETag", f'"{f.blob_id}"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self._bytes(repo_id, repo.commit, name, body)

        def _bytes(self, repo_id: str, commit: str, name: str, body: bool) -> None:
            repo = hub.repos.get(repo_id)
            f = repo.files.get(name) if repo and repo.commit == commit else None
            if f is None:
                self._error(404, "EntryNotFound", f"{name} does not exist")
                return
            start, end, status = 0, f.size - 1, 200
            if (rng := self.headers.get("Range")) and not hub.bare:
                m = _RANGE.match(rng)
                if not m or int(m.group(1)) >= f.size:
                    self.req.status = 416
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{f.size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = int(m.group(1))
                end = min(int(m.group(2)), f.size - 1) if m.group(2) else f.size - 1
                status = 206
            length: int | None = end - start + 1
            over = hub._lengths.get((repo_id, name))
            if over is not None:
                length = over[0] if over[1] else None
            self.req.status = status
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            if length is None:  # the body ends when the connection does
                self.send_header("Connection", "close")
                self.close_connection = True
            else:
                self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", f'"{f.sha256 or f.blob_id}"')
            self.send_header("X-Repo-Commit", commit)
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{f.size}")
            self.end_headers()
            if not body:
                return
            data = bytearray(f.path.read_bytes()[start : end + 1])
            if over is not None:
                data = (data + bytes(max(0, over[0] - len(data))))[: over[0]]
            if (repo_id, name) in hub._corrupt and data:
                data[len(data) // 2] ^= 0xFF
            limit = hub._cuts.pop((repo_id, name), None)
            if (repo_id, name) in hub._drips:
                limit = hub._drips[(repo_id, name)]
            if limit is not None:
                data = data[:limit]
                self.close_connection = True  # hang up with the body unfinished
            rate = hub._rates.get((repo_id, name))
            try:
                for i in range(0, len(data), SEND_CHUNK):
                    self.wfile.write(data[i : i + SEND_CHUNK])
                    self.wfile.flush()
                    self.req.sent += len(data[i : i + SEND_CHUNK])
                    if rate:
                        time.sleep(SEND_CHUNK / rate)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client went away (cancelled, killed)

        def _json(self, status: int, obj: object) -> None:
            payload = json.dumps(obj).encode()
            self.req.status = status
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _error(self, status: int, code: str, message: str) -> None:
            payload = json.dumps({"error": message}).encode()
            self.req.status = status
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

    return Handler
