"""`dolly-desktop models ...`: list, download, export, compress, import, remove.

Long commands print progress as JSON lines on stdout ({"stage": ..., "fraction": ...}; the
last has "path"), which core.jobs.ChildJob reads when the app runs them in a child process.
Anything libraries print goes to stderr so that stdout stays machine-readable.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from dolly_desktop.errors import DollyError
from dolly_desktop.models.capacity import DEFAULT_KEEP_FREE, GB, format_bytes

if TYPE_CHECKING:
    from dolly_desktop.models.compress import Int4Options
    from dolly_desktop.models.folder import Precision
    from dolly_desktop.models.store import InstalledModel, Store

EXIT_INTERRUPTED = 130


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `models` parser; set `func` on it (see dolly_desktop/cli.py)."""
    p = sub.add_parser("models", help="list, download, export, compress, import or remove models")
    ms = p.add_subparsers(dest="models_command", required=True, parser_class=type(p))

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", metavar="DIR", help="the model store (default: the app's)")
    room = argparse.ArgumentParser(add_help=False)
    room.add_argument(
        "--keep-free",
        type=float,
        default=DEFAULT_KEEP_FREE / GB,
        metavar="GB",
        help=f"refuse if less than this would stay free (default: {DEFAULT_KEEP_FREE / GB:g})",
    )
    int4 = argparse.ArgumentParser(add_help=False)
    int4.add_argument("--sym", action="store_true", default=None, help="INT4: symmetric")
    int4.add_argument("--group-size", type=int, metavar="N", help="INT4: group size (128)")
    int4.add_argument("--ratio", type=float, metavar="X", help="INT4: share of INT4 layers (1)")

    ls = ms.add_parser("list", parents=[common], help="installed models and partial downloads")
    ls.add_argument("--available", action="store_true", help="the catalog, with what is here")
    ls.set_defaults(func=cmd_list)

    dl = ms.add_parser(
        "download", parents=[common, room], help="download from the Hugging Face Hub"
    )
    dl.add_argument("model", help="dolly-v2-3b, dolly-v2-7b or dolly-v2-12b (or a name, --repo)")
    what = dl.add_mutually_exclusive_group()
    what.add_argument("--precision", default="INT4", help="FP16, INT8 or INT4 (default: INT4)")
    what.add_argument(
        "--checkpoint", action="store_true", help="the original PyTorch weights, to export"
    )
    dl.add_argument("--repo", help="download this Hub repo instead of the catalog's")
    dl.add_argument("--revision", default="main", help="branch, tag or commit (default: main)")
    dl.add_argument("--endpoint", help="the Hub's address (default: HF_ENDPOINT or the Hub)")
    dl.add_argument("--retries", type=int, default=5, help="resume attempts after a cut (5)")
    dl.set_defaults(func=cmd_download)

    ex = ms.add_parser(
        "export", parents=[common, room, int4], help="export a PyTorch checkpoint to OpenVINO"
    )
    ex.add_argument("src", help="checkpoint folder, or the name of a downloaded checkpoint")
    ex.add_argument("--precision", default="INT4", help="FP16, INT8 or INT4 (default: INT4)")
    ex.add_argument("--name", help="name in the store (default: the folder's name)")
    ex.set_defaults(func=cmd_export)

    cp = ms.add_parser(
        "compress", parents=[common, room, int4], help="compress an installed FP16 with NNCF"
    )
    cp.add_argument("name", help="a model with an FP16 variant installed, e.g. dolly-v2-3b")
    cp.add_argument("--precision", default="INT4", help="INT8 or INT4 (default: INT4)")
    cp.set_defaults(func=cmd_compress)

    im = ms.add_parser(
        "import",
        parents=[common, room, int4],
        help="copy in an OpenVINO folder or the notebook's layout; export a checkpoint",
    )
    im.add_argument("src", help="the folder to import")
    im.add_argument("--name", help="name in the store (default: from the folder)")
    im.add_argument("--precision", help="override the detected precision (checkpoint: INT4)")
    im.set_defaults(func=cmd_import)

    rm = ms.add_parser("remove", parents=[common], help="remove an installed variant")
    rm.add_argument("target", help="NAME/VARIANT, e.g. dolly-v2-3b/INT4 (--partial: a repo id)")
    rm.add_argument("--partial", action="store_true", help="discard a partial download")
    rm.set_defaults(func=cmd_remove)


# -- helpers ---------------------------------------------------------------------------------


def _store(a: argparse.Namespace) -> Store:
    from dolly_desktop.models.store import Store

    return Store(Path(a.store).expanduser() if a.store else None)


def _keep_free(a: argparse.Namespace) -> int:
    if a.keep_free < 0:
        raise DollyError(f"--keep-free must be 0 or more; got {a.keep_free:g}.")
    return int(a.keep_free * GB)


def _int4(a: argparse.Namespace, precision: Precision) -> Int4Options | None:
    from dolly_desktop.models.compress import Int4Options
    from dolly_desktop.models.folder import Precision

    given = {
        k: v
        for k, v in (("sym", a.sym), ("group_size", a.group_size), ("ratio", a.ratio))
        if v is not None
    }
    if precision is not Precision.INT4:
        if given:
            raise DollyError("--sym, --group-size and --ratio apply to INT4 only.")
        return None
    return Int4Options(**given)


@contextlib.contextmanager
def _progress_lines() -> Iterator[Callable[..., None]]:
    """Yield `emit(stage, fraction, **extra)` writing JSON lines to the real stdout, while
    whatever libraries print goes to stderr."""
    out: TextIO = sys.stdout

    def emit(stage: str, fraction: float, **extra: Any) -> None:
        if stage == "done" and not extra:
            return  # the store's own end; the command's last line says what was installed
        out.write(json.dumps({"stage": stage, "fraction": round(fraction, 4), **extra}) + "\n")
        out.flush()

    with contextlib.redirect_stdout(sys.stderr):
        yield emit


def _done(emit: Callable[..., None], models: list[InstalledModel]) -> int:
    emit("done", 1.0, path=str(models[-1].path), installed=[m.label for m in models])
    for m in models:
        print(f"Installed {m.label} ({format_bytes(m.size_bytes)}) in {m.path}", file=sys.stderr)
    return 0


def _interrupted(what: str) -> int:
    print(f"dolly-desktop: {what}", file=sys.stderr)
    return EXIT_INTERRUPTED


# -- commands --------------------------------------------------------------------------------


def cmd_list(a: argparse.Namespace) -> int:
    store = _store(a)
    installed = store.list()
    if a.available:
        return _list_available(installed)
    if not installed:
        print(f"No models installed in {store.root}.", file=sys.stderr)
    for m in installed:
        rate = m.compression_line or ""
        note = f"problem: {m.problem}" if m.problem else m.source
        print(f"{m.label:<26} {format_bytes(m.size_bytes):>10}  {rate:<22} {note}".rstrip())
    for p in store.partial_downloads():
        print(
            f"partial download of {p.repo_id}: {format_bytes(p.bytes_done)} so far "
            "(download again to resume, or remove --partial)"
        )
    return 0


def _list_available(installed: list[InstalledModel]) -> int:
    from dolly_desktop.models.catalog import CATALOG

    here = {m.label for m in installed if m.problem is None}
    print(f"{'variant':<20} {'download':>10} {'RAM to run':>11}  source")
    for model in CATALOG.values():
        for v in model.variants:
            source = v.repo_id or f"export from {model.source_repo}"
            mark = "  (installed)" if v.label in here else ""
            print(
                f"{v.label:<20} {format_bytes(v.download_bytes):>10} "
                f"{format_bytes(v.run_ram_bytes):>11}  {source}{mark}"
            )
        print(
            f"{model.name + '/PyTorch':<20} {format_bytes(model.checkpoint_bytes):>10} "
            f"{'':>11}  {model.source_repo} (export needs about "
            f"{format_bytes(model.export_ram_bytes)} of memory)"
        )
    print("Sizes are approximate, measured on dolly-v2-3b and scaled for 7b and 12b.")
    return 0


def cmd_download(a: argparse.Namespace) -> int:
    from dolly_desktop.models.cancel import Cancelled
    from dolly_desktop.models.catalog import CHECKPOINT
    from dolly_desktop.models.download import TransferProgress
    from dolly_desktop.models.folder import Precision

    variant = CHECKPOINT if a.checkpoint else Precision.parse(a.precision).value
    store = _store(a)
    with _progress_lines() as emit:

        def report(p: TransferProgress) -> None:
            extra = dict(file=p.file, done=p.done_bytes, total=p.total_bytes)
            extra.update(speed=round(p.speed_bps), eta=None if p.eta_s is None else round(p.eta_s))
            emit(p.stage, p.fraction, **extra)

        try:
            m = store.download(
                a.model,
                variant,
                repo_id=a.repo,
                revision=a.revision,
                endpoint=a.endpoint,
                progress=report,
                retries=a.retries,
                keep_free=_keep_free(a),
            )
        except (KeyboardInterrupt, Cancelled):
            return _interrupted("download stopped; run the same command again to resume.")
        return _done(emit, [m])


def cmd_export(a: argparse.Namespace) -> int:
    from dolly_desktop.models.folder import Precision

    store = _store(a)
    precision = Precision.parse(a.precision)
    int4 = _int4(a, precision)
    src = store.resolve_checkpoint(a.src)
    with _progress_lines() as emit:
        try:
            m = store.export(src, precision, int4, a.name, emit, keep_free=_keep_free(a))
        except KeyboardInterrupt:
            return _interrupted("export stopped; nothing was installed.")
        return _done(emit, [m])


def cmd_compress(a: argparse.Namespace) -> int:
    from dolly_desktop.models.folder import Precision

    store = _store(a)
    precision = Precision.parse(a.precision)
    int4 = _int4(a, precision)
    name = a.name.removesuffix("/FP16")
    with _progress_lines() as emit:
        try:
            m = store.compress(name, precision, int4, emit, keep_free=_keep_free(a))
        except KeyboardInterrupt:
            return _interrupted("compression stopped; nothing was installed.")
        return _done(emit, [m])


def cmd_import(a: argparse.Namespace) -> int:
    from dolly_desktop.models.folder import Precision

    store = _store(a)
    plan = store.plan_import(Path(a.src), a.name, a.precision)
    with _progress_lines() as emit:
        try:
            if plan.kind == "checkpoint":  # importing a checkpoint means exporting it
                precision = Precision.parse(a.precision or "INT4")
                int4 = _int4(a, precision)
                models = [store.export(plan.src, precision, int4, plan.name, emit, _keep_free(a))]
            else:
                models = store.import_folder(
                    plan.src, plan.name, a.precision, emit, keep_free=_keep_free(a)
                )
        except KeyboardInterrupt:
            return _interrupted("import stopped; what was being copied was not installed.")
        return _done(emit, models)


def cmd_remove(a: argparse.Namespace) -> int:
    store = _store(a)
    if a.partial:
        store.discard_partial(a.target)
        print(f"Discarded the partial download of {a.target}.", file=sys.stderr)
        return 0
    name, _, variant = a.target.strip("/").partition("/")
    if not variant:
        here = [m.label for m in store.list() if m.name == name]
        choices = f": {', '.join(here)}" if here else ""
        raise DollyError(f"Say which variant of {name} to remove{choices}.")
    m = store.get(name, variant)
    store.remove(name, variant)
    print(f"Removed {m.label} ({format_bytes(m.size_bytes)}).", file=sys.stderr)
    return 0
