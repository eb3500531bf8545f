"""Will it fit? Free disk space and available memory, checked before long jobs.

A download or export that dies at 90% because the disk filled up wastes an hour; refusing up
front with the figures lets the person free space or pick a smaller variant.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from dolly_desktop.errors import DollyError

GB = 1_000_000_000  # the Hub and file managers count in decimal units
# Kept free after a job by default: a disk filled to the last byte breaks everything else too.
DEFAULT_KEEP_FREE = GB // 2


def format_bytes(n: float) -> str:
    """1.57 GB, 13.4 MB, 812 KB: the units the Hub shows."""
    for unit, size in (("GB", GB), ("MB", 1_000_000), ("KB", 1_000)):
        if abs(n) >= size:
            return f"{n / size:.2f} GB" if unit == "GB" else f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def free_disk_bytes(path: Path) -> int:
    """Free space on the filesystem that holds `path` (or would hold it, if not made yet)."""
    p = Path(path).expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def available_memory_bytes() -> int | None:
    """Memory the system can give a new job without swapping (None if it cannot tell)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:  # Linux without psutil
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_disk(path: Path, needed: int, what: str, keep_free: int = DEFAULT_KEEP_FREE) -> None:
    """Refuse when `needed` bytes plus `keep_free` will not fit where `path` lives."""
    free = free_disk_bytes(path)
    if needed + keep_free > free:
        extra = f" (keeping {format_bytes(keep_free)} free)" if keep_free else ""
        raise DollyError(
            f"{what} needs {format_bytes(needed)} of disk space{extra} in {path}, "
            f"but only {format_bytes(free)} is free."
        )


def check_memory(needed: int, what: str, available: int | None = None) -> None:
    """Refuse when the job's peak memory is more than the system has available now."""
    have = available_memory_bytes() if available is None else available
    if have is not None and needed > have:
        raise DollyError(
            f"{what} needs about {format_bytes(needed)} of memory, "
            f"but only {format_bytes(have)} is available: close other programs or "
            "choose a smaller model."
        )
