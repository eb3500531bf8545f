"""What a start leaves for the next start (issue 27, item 2; docs/start.md). Each start here is a
fresh process, as a person's next start of the app or the next `dolly-desktop generate` is.

- The compiled-model cache: the second start imports the blob the first wrote (the folder gains
  none and the one there is not written again) and answers the same.
- The OS page cache: a warm start still reads the whole weights file (OpenVINO hashes the model
  to find its blob), and the engine's release of its mapped weights (MADV_PAGEOUT) frees them
  from the page cache too, so the engine has the kernel read them back; else the next start
  reads them from disk (for 3b INT4, 1.6 GB).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import copy_model

LOAD = """
import json, sys
from pathlib import Path
from dolly_desktop.generation.engines.local import Engine
from dolly_desktop.generation.params import GenerationParams
engine = Engine(sys.argv[1], cache_dir=Path(sys.argv[2]), calibrate=False)
answer = engine.generate("Who is Dolly?", GenerationParams(greedy=True, max_new_tokens=8))
print(json.dumps(answer.token_ids))
"""


def start(model: Path, cache: Path) -> list[int]:
    """Load the model in a fresh process and answer greedily: the answer's token ids."""
    argv = [sys.executable, "-c", LOAD, str(model), str(cache)]
    out = subprocess.run(argv, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def blobs(cache: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in cache.glob("*.blob")}


def test_a_second_start_imports_the_blob_and_answers_the_same(tiny_models, tmp_path):
    model, cache = tiny_models["INT4"], tmp_path / "ov-cache"
    first = start(model, cache)
    written = blobs(cache)
    assert len(written) == 1, written

    second = start(model, cache)
    assert blobs(cache) == written  # imported: no new blob, the one there not written again
    assert second == first


def resident_bytes(path: Path) -> int:
    """How much of `path` the OS page cache holds (util-linux fincore)."""
    argv = ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)]
    return int(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which("fincore") is None,
    reason="MADV_PAGEOUT and fincore are Linux's",
)
def test_a_start_leaves_the_weights_in_the_os_page_cache(tiny_models, tmp_path):
    # A copy no other process maps (MADV_PAGEOUT leaves alone the pages two mappings share),
    # written to disk: the kernel does not reclaim pages still to be written back.
    model = copy_model(tiny_models["INT4"], tmp_path / "m")
    weights, cache = model / "openvino_model.bin", tmp_path / "ov-cache"
    with weights.open("rb") as f:
        os.fsync(f.fileno())
    size = weights.stat().st_size
    start(model, cache)  # writes the blob
    weights.read_bytes()  # all in the page cache, as after an export or a download
    assert resident_bytes(weights) > 0.9 * size

    start(model, cache)  # from the blob: the start whose release left none of the file there
    # The kernel reads the file back on its own after the engine asks: wait for it (without
    # the read-back the page cache keeps none of the file, and this fails after the wait).
    deadline = time.monotonic() + 30
    while resident_bytes(weights) < 0.9 * size and time.monotonic() < deadline:
        time.sleep(0.2)
    assert resident_bytes(weights) > 0.9 * size, (resident_bytes(weights), size)
