"""No segfault when engines come and go (issue 22): several pipelines with different properties
alive in one process, template priming (a one-token generate cancelled at once), engines closed
and collected while others load. The cause was ours: memory.release_mapped_files dropped pages
of address ranges read from /proc/self/maps a moment earlier with MADV_DONTNEED, which zeroes
whatever private memory had been mapped there since (docs/segfault.md)."""

from __future__ import annotations

import ctypes
import mmap
import subprocess
import sys

import pytest

from dolly_desktop.generation import memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise: Linux")


def test_releasing_a_stale_range_keeps_the_memory_that_replaced_the_weights(tmp_path):
    """The race, made deterministic: the weights' range is read, the file is unmapped, private
    memory is mapped at the same address and written, then the stale range is released."""
    weights = tmp_path / "openvino_model.bin"
    weights.write_bytes(b"w" * (4 << 20))
    with open(weights, "rb") as fh:
        mapped = mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ)
    assert mapped[0] == ord("w")
    (start, end), *_ = memory.mapped_ranges({str(weights.resolve())})
    mapped.close()  # the runtime is done with the file...
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]  # fmt: skip
    prot, flags = mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    fixed = 0x10  # MAP_FIXED: ...and malloc puts fresh memory at the same address
    addr = libc.mmap(start, end - start, prot, flags | fixed, -1, 0)
    assert addr == start, ctypes.get_errno()
    try:
        data = (ctypes.c_char * (end - start)).from_address(start)
        data[0:5] = b"alive"
        memory.release_ranges([(start, end)])
        assert data[0:5] == b"alive", "releasing the weights' old range wiped live memory"
    finally:
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.munmap(start, end - start)


_CHURN = r"""
import gc, random, sys
from dolly_desktop.generation.engines.local import Engine
from dolly_desktop.generation.params import GenerationParams
models, rounds, seed = sys.argv[1].split(","), int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
exact = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}
configs = [exact, {}, {"DYNAMIC_QUANTIZATION_GROUP_SIZE": "32"}, {"KV_CACHE_PRECISION": "u8"}]
greedy = GenerationParams(greedy=True, max_new_tokens=8)
alive = []
for i in range(rounds):
    e = Engine(rng.choice(models), properties=rng.choice(configs),
               reuse_template=rng.random() < 0.7)
    for _ in range(rng.randint(1, 3)):
        e.generate(rng.choice(["Who is Dolly?", "Write a poem about the sea."]), greedy)
    alive.append(e)
    if len(alive) > rng.randint(1, 6):
        old = alive.pop(rng.randrange(len(alive)))
        if rng.random() < 0.5:
            old.close()
        del old
        gc.collect()
print("survived", rounds)
"""


@pytest.mark.slow
def test_engines_loaded_primed_and_dropped_many_times_in_one_process(tiny_models, tmp_path):
    """Before the fix, 1 run in 3 of 60 rounds died with SIGSEGV (round 3; AMD EPYC, 2 cores)."""
    models = ",".join(str(tiny_models[p]) for p in ("FP16", "INT4", "INT8"))
    for seed in (1, 2, 3):
        p = subprocess.run(
            [sys.executable, "-X", "faulthandler", "-c", _CHURN, models, "40", str(seed)],
            capture_output=True, text=True, timeout=900,
            env={**__import__("os").environ, "DOLLY_DESKTOP_HOME": str(tmp_path / "home")},
        )  # fmt: skip
        assert p.returncode == 0, f"seed {seed}: exit {p.returncode}\n{p.stderr[-3000:]}"
        assert "survived 40" in p.stdout
