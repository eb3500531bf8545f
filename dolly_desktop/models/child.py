"""Child jobs over the store: the jobs the window asks for (an export, a compression), and the
child process's entry point that runs one. The protocol both ends speak is convert/jobs.py.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dolly_desktop.errors import DollyError
from dolly_desktop.models.cancel import Progress
from dolly_desktop.models.capacity import DEFAULT_KEEP_FREE
from dolly_desktop.models.convert.compress import Int4Options
from dolly_desktop.models.convert.jobs import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    ChildJob,
    ErrorMsg,
    JobRequest,
    Message,
    ProgressMsg,
    ResultMsg,
    encode,
)
from dolly_desktop.models.folder import Precision
from dolly_desktop.models.store import Store

log = logging.getLogger(__name__)


def _int4_dict(int4: Int4Options | None) -> dict[str, Any] | None:
    return None if int4 is None else asdict(int4)


def export_job(
    store: Store,
    src: Path,
    precision: Precision,
    int4: Int4Options | None = None,
    name: str | None = None,
    progress: Progress | None = None,
    keep_free: int = DEFAULT_KEEP_FREE,
) -> ChildJob:
    """A child-process export of the checkpoint `src` into the store as `name/precision`."""
    name = name or store.default_name(src)
    dest = store.path_for(name, precision.value)  # refuses a bad name before anything starts
    request = JobRequest(
        "export", str(store.root), precision.value, str(src), name, _int4_dict(int4), keep_free
    )
    return ChildJob(request, dest, progress)


def compress_job(
    store: Store,
    name: str,
    precision: Precision,
    int4: Int4Options | None = None,
    progress: Progress | None = None,
    keep_free: int = DEFAULT_KEEP_FREE,
) -> ChildJob:
    """A child-process NNCF compression of the store's `name/FP16` into `name/precision`."""
    dest = store.path_for(name, precision.value)
    request = JobRequest(
        "compress", str(store.root), precision.value, name, None, _int4_dict(int4), keep_free
    )
    return ChildJob(request, dest, progress)


def child_main(argv: Sequence[str]) -> int:
    """Run one JobRequest (argv[0], JSON) and report on stdout in the protocol above."""
    from dolly_desktop.logs import setup_logging
    from dolly_desktop.models.store import Store

    setup_logging(console=True)
    out = sys.stdout
    sys.stdout = sys.stderr  # whatever libraries print must not mix with the protocol

    def send(msg: Message) -> None:
        out.write(encode(msg) + "\n")
        out.flush()

    def progress(stage: str, fraction: float) -> None:
        if stage != "done":  # the Result message says that
            send(ProgressMsg(stage, round(fraction, 4)))

    try:
        req = JobRequest(**json.loads(argv[0]))
        store = Store(Path(req.store))
        precision = Precision.parse(req.precision)
        int4 = Int4Options(**req.int4) if req.int4 is not None else None
        if req.kind == "export":
            src = store.resolve_checkpoint(req.src)
            m = store.export(src, precision, int4, req.name, progress, keep_free=req.keep_free)
        elif req.kind == "compress":
            m = store.compress(req.src, precision, int4, progress, keep_free=req.keep_free)
        else:
            raise DollyError(f"Unknown job kind {req.kind!r}.")
    except DollyError as e:
        send(ErrorMsg(str(e)))
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # the trace goes to the log; the parent shows one sentence
        log.exception("child job failed")
        send(ErrorMsg(f"unexpected error: {e} (details in the log)"))
        return EXIT_FAILED
    send(ResultMsg(str(m.path), [m.label]))
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
