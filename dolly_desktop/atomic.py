"""Install a folder or write a file atomically: build it in a hidden sibling, then rename."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from dolly_desktop.errors import DollyError


@contextmanager
def staged_folder(dest: Path, check: Callable[[Path], object] | None = None) -> Iterator[Path]:
    """Yield an empty staging folder next to `dest`; on success rename it to `dest`.

    Any exception (including KeyboardInterrupt) removes the staging folder, so a failed or
    cancelled job leaves nothing half-installed and whatever was at `dest` is untouched.
    """
    if dest.exists():
        raise DollyError(f"{dest} already exists: remove it first or choose another folder.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        yield staging
        if check is not None:
            check(staging)
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def remove_stale_staging(parent: Path) -> None:
    """Remove staging folders left by a process that was killed mid-job."""
    if parent.is_dir():
        for p in parent.glob(".*.partial-*"):
            shutil.rmtree(p, ignore_errors=True)


@contextmanager
def written_file(dest: Path) -> Iterator[TextIO]:
    """Yield a text file (UTF-8, "\n" line ends) that replaces `dest` when the block ends
    without an exception; otherwise `dest` is left as it was and the temporary sibling removed.
    Flushed to disk before the rename, so a crash leaves the old file or the new, never half."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
