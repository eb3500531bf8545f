"""Cancel and progress for long model work: the two things every job, download and copy share."""

from __future__ import annotations

import threading
from collections.abc import Callable

Progress = Callable[[str, float], None]  # (stage, fraction done 0..1), as in core.export


class Cancelled(Exception):
    """The person stopped the job; whatever it was writing has been removed."""


def raise_if_cancelled(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled()
