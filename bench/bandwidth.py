"""The machine's memory read bandwidth, the ceiling for decode: each new token reads every
weight once (bar the input embedding, of which it reads one row) plus the KV cache so far.

    .venv/bin/python -m bench.bandwidth
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

SIZE = 2**28  # float64 elements: 2 GiB, far beyond any cache


def read_gbs(threads: int, repeats: int = 5) -> float:
    """Best-of-`repeats` read bandwidth (GB/s) summing one 2 GiB array in `threads` slices
    (numpy releases the GIL in the reduction, so the slices run in parallel)."""
    a = np.ones(SIZE, dtype=np.float64)
    parts = np.array_split(a, threads)
    best = 0.0
    for _ in range(repeats + 1):  # the first pass only faults the pages in
        workers = [threading.Thread(target=np.sum, args=(p,)) for p in parts]
        t = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, a.nbytes / (time.perf_counter() - t) / 1e9)
    return best


def weight_bytes_per_token(model_xml: Path) -> tuple[int, int]:
    """(bytes of weights a decode step reads, bytes of the input embedding it skips): every
    constant but the input embedding table, of which a step gathers one row."""
    import openvino as ov

    read = skipped = 0
    for op in ov.Core().read_model(model_xml).get_ordered_ops():
        if op.get_type_name() == "Constant":
            n = op.get_byte_size()
            if "embed_in" in op.get_friendly_name():
                skipped += n
            else:
                read += n
    return read, skipped


def kv_bytes_per_token(layers: int, hidden: int, positions: int, bytes_per_value: float) -> float:
    """Bytes of K and V a decode step reads at `positions` tokens of context."""
    return 2 * layers * hidden * positions * bytes_per_value


def main() -> None:
    for n in (1, 2):
        print(f"read bandwidth, {n} thread(s): {read_gbs(n):.1f} GB/s")


if __name__ == "__main__":
    main()
