"""`dolly-desktop serve` as a real child process on 127.0.0.1 for the tests that drive it, and
the bare engine's answers to compare with."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from conftest import EXACT

from dolly_desktop import paths
from dolly_desktop.generation.engine import GenerationResult
from dolly_desktop.generation.engines.local import Engine
from dolly_desktop.generation.params import GenerationParams

INSTRUCTION = "Who is Dolly?"
START_TIMEOUT_S = 90
SERVE = (sys.executable, "-m", "dolly_desktop.cli", "serve")
# `serve` takes no OpenVINO properties: this child runs the same CLI with both engines (batching,
# and one at a time for --batching off) at exact f32 (conftest.EXACT), so that greedy answers
# are the same in every process and equal the one-stream engine's token for token.
EXACT_SERVE = (
    sys.executable,
    "-c",
    "import functools, sys\n"
    "from dolly_desktop.generation.engines.batching import BatchingEngine as B\n"
    "from dolly_desktop.generation.engines.local import Engine as E\n"
    f"B.__init__ = functools.partialmethod(B.__init__, properties={EXACT!r})\n"
    f"E.__init__ = functools.partialmethod(E.__init__, properties={EXACT!r})\n"
    "from dolly_desktop.cli import main\n"
    "sys.exit(main())",
    "serve",
)


@dataclass
class Served:
    url: str  # base URL, ending in /v1
    proc: subprocess.Popen
    log: Path  # the process's stderr

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_process(model: Path, *args: str, exact: bool = False) -> Iterator[Served]:
    """`dolly-desktop serve` as a subprocess on a free port, once it answers HTTP; `exact`:
    its batching engine at exact f32 (EXACT_SERVE)."""
    port = free_port()
    with tempfile.NamedTemporaryFile(prefix="serve-", suffix=".log", delete=False) as f:
        log = Path(f.name)
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [*(EXACT_SERVE if exact else SERVE), "--model", str(model), "--port", str(port), *args],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    served = Served(f"http://127.0.0.1:{port}/v1", proc, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, f"serve exited: {served.stderr()}"
            assert time.monotonic() < deadline, f"serve did not start: {served.stderr()}"
            with contextlib.suppress(httpx.TransportError):
                httpx.get(f"{served.url}/models", timeout=2)
                break  # any HTTP answer (401 included) means it is up
            time.sleep(0.1)
        yield served
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.unlink(missing_ok=True)


Reference = Callable[[str, int], GenerationResult]


def make_reference(model: Path, exact: bool = False) -> Reference:
    """The bare engine's greedy answers, with the server's default properties, or at exact f32
    (`exact`, as serve_process's): answers of a few hundred tokens are the same one at a time and
    batched only in exact arithmetic (on a Sapphire Rapids with AMX, bf16 ones parted after 260
    to 540 characters)."""
    engine = Engine(model, properties=EXACT if exact else None)
    cache: dict[tuple[str, int], GenerationResult] = {}

    def answer(instruction: str, max_tokens: int) -> GenerationResult:
        key = (instruction, max_tokens)
        if key not in cache:
            params = GenerationParams(greedy=True, max_new_tokens=max_tokens)
            cache[key] = engine.generate(instruction, params)
        return cache[key]

    return answer


def server_log() -> list[str]:
    return (paths.log_dir() / "dolly-desktop.log").read_text().splitlines()


def post_json(url: str, body: dict, timeout: float = 60) -> httpx.Response:
    """POST `body` as Python's json writes it: NaN and Infinity included, which the server's
    parser reads, as many do (httpx's json= refuses them)."""
    return httpx.post(url, content=json.dumps(body), timeout=timeout,
                      headers={"Content-Type": "application/json"})  # fmt: skip


def json_schema_format(schema: object) -> dict:
    """A `response_format` asking for answers that follow `schema`."""
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
