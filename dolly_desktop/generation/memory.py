"""Keep the engine's memory bounded: mapped weight pages, per-shape kernel caches, the heap.

Mapped weights. OpenVINO maps openvino_model.bin (or the compiled-model cache blob) into
memory, and the CPU plugin repacks the weights into its own layout on the first inference.
From then on the mapped pages sit in the resident set unread, so RSS is about twice the
weights. Dropping them from this process's page tables is safe for a read-only file mapping:
a page read again is faulted back in from the file. Linux only; elsewhere this does nothing.

Prompt lengths. Every new prompt length is a new input shape, and the CPU plugin compiles and
keeps kernels for it in two caches: its own runtime cache (an LRU of 5000 node executors by
default, property CPU_RUNTIME_CACHE_CAPACITY) and oneDNN's primitive cache (1024 primitives,
read once per process from the ONEDNN_PRIMITIVE_CACHE_CAPACITY environment variable). On the
tiny model each new length kept about 1.4 MB, and nothing came back: 0.4 GB after 300 lengths.
Both must be bounded: the runtime cache's executors hold their oneDNN primitives. glibc's
heap is not the culprit (malloc_trim after every answer gave back 0-2 MB, with or without the
bounds). docs/benchmarks.md, "Memory across prompt lengths", has the measurements. The
batching engine (generation/engines/batching.py) gets both bounds too.

The batching engine's KV cache. genai allocates it whole at start and hands its blocks out
first in, first out, so over enough requests every page of it is touched and stays resident,
whatever the prompts' lengths: the cache's size is a floor the server's RSS reaches, and
batching.py sizes it to `--max-batch` full contexts and no more (docs/benchmarks.md, "Serve
memory: the KV cache").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

# MADV_PAGEOUT (Linux 5.4+), never MADV_DONTNEED: the ranges come from a snapshot of
# /proc/self/maps, and by the time madvise runs another thread may have unmapped the weights and
# malloc put fresh memory at that address. DONTNEED zeroes private anonymous memory (a segfault
# in the tokenizer or the first inference, 1 in 3 runs of tests/test_engine_stress.py); PAGEOUT
# only reclaims: clean file pages come back from the file, anonymous ones stay (no swap here) or
# go to swap. docs/segfault.md has the reproduction.
MADV_PAGEOUT = 21
ONEDNN_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"


def bound_onednn_cache(capacity: int) -> None:
    """Cap oneDNN's primitive cache for this process, unless the environment already does.

    oneDNN reads the variable once, when it creates its first primitive: this must run before
    the first model is compiled on the CPU (generation/engines/local.py calls it at import)."""
    os.environ.setdefault(ONEDNN_CACHE_ENV, str(capacity))


def mapped_ranges(paths: set[str]) -> list[tuple[int, int]]:
    """(start, end) of this process's read-only mappings of any of `paths`."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5] in paths and "w" not in parts[1]:
            start, end = (int(x, 16) for x in parts[0].split("-"))
            ranges.append((start, end))
    return ranges


def release_mapped_files(files: list[Path]) -> int:
    """Drop the resident pages of read-only mappings of `files`; return the bytes released
    from the address ranges (resident or not)."""
    if not sys.platform.startswith("linux"):
        return 0
    return release_ranges(mapped_ranges({str(f.resolve()) for f in files}))


def release_ranges(ranges: list[tuple[int, int]]) -> int:
    """Reclaim the pages of these address ranges, whatever is mapped there now (see
    MADV_PAGEOUT): harmless to memory that replaced the weights meanwhile."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    released = 0
    for start, end in ranges:
        if libc.madvise(start, end - start, MADV_PAGEOUT) == 0:
            released += end - start
        else:
            log.debug("madvise failed on %x-%x: errno %d", start, end, ctypes.get_errno())
    return released


@contextmanager
def releasing_mapped_files(files: Callable[[], list[Path]], every_s: float = 0.2) -> Iterator[None]:
    """Keep handing back the mapped pages of `files()` while the block runs, and once after.

    Compiling and the first inference read each weight about once, so without this the whole
    file stays resident next to the runtime's copy until the end: a peak of twice the weights.
    A page still to be read is faulted back in from the page cache.
    """
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every_s):
            release_mapped_files(files())

    worker = threading.Thread(target=loop, name="release-mapped-weights", daemon=True)
    worker.start()
    try:
        yield
    finally:
        stop.set()
        worker.join()
        release_mapped_files(files())
        refill = threading.Thread(
            target=refill_page_cache, args=(files(),), name="refill-page-cache", daemon=True
        )
        refill.start()


REFILL_STEP = 8 << 20  # Linux reads ahead at most a few MB per advice


def refill_page_cache(files: list[Path]) -> None:
    """Have the kernel read `files` back into the OS page cache, without this process mapping
    or copying them (POSIX_FADV_WILLNEED: the disk reads run on their own).

    MADV_PAGEOUT frees the released pages from the page cache too, where no other process maps
    them, and the next start reads the whole weights file again, even with the compiled-model
    cache (OpenVINO hashes the model's weights to find its blob): from disk, without this
    (docs/start.md, 1.6 GB for 3b INT4). The page cache is not the process's memory, and the
    kernel drops it first when memory is short."""
    if not hasattr(os, "posix_fadvise"):
        return
    for f in files:
        try:
            fd = os.open(f, os.O_RDONLY)
        except OSError:
            continue
        try:
            size = os.fstat(fd).st_size
            for offset in range(0, size, REFILL_STEP):
                os.posix_fadvise(fd, offset, REFILL_STEP, os.POSIX_FADV_WILLNEED)
        except OSError as e:
            log.debug("could not read %s back into the page cache: %s", f, e)
        finally:
            os.close(fd)
