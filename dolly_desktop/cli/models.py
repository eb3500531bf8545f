"""`dolly-desktop models ...`: list, download, export, compress, import, remove, check.

Long commands show a person at a terminal a progress bar on stderr (tqdm: bytes, speed and ETA
for downloads, a percentage for the rest). With `--json` they print JSON lines on stdout
instead, for programs: {"stage": ..., "fraction": ...}, downloads adding file, done, total,
speed and eta; the last line has "path" and "installed". Anything libraries print goes to
stderr, so that stdout stays machine-readable.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from dolly_desktop.cli.compare import add_check_options, cmd_check
from dolly_desktop.cli.options import EXIT_INTERRUPTED
from dolly_desktop.errors import DollyError
from dolly_desktop.models.capacity import DEFAULT_KEEP_FREE, GB, format_bytes

if TYPE_CHECKING:
    from tqdm import tqdm

    from dolly_desktop.models.convert.compress import Int4Options
    from dolly_desktop.models.folder import Precision
    from dolly_desktop.models.hub.download import TransferProgress
    from dolly_desktop.models.store import InstalledModel, Store


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `models` parser; set `func` on it (see dolly_desktop/cli.py)."""
    p = sub.add_parser("models", help="list, download, export, compress, import or remove models")
    ms = p.add_subparsers(dest="models_command", required=True, parser_class=type(p))

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", metavar="DIR", help="the model store (default: the app's)")
    room = argparse.ArgumentParser(add_help=False)  # the long commands
    room.add_argument(
        "--json",
        action="store_true",
        help="progress as JSON lines on stdout, for programs (default: a bar on a terminal)",
    )
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
    ls.add_argument(
        "--refresh", action="store_true", help="with --available: ask the Hub for its list first"
    )
    ls.add_argument("--endpoint", help="the Hub's address (default: HF_ENDPOINT or the Hub)")
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

    ck = ms.add_parser(
        "check",
        parents=[common],
        help="measure a variant's agreement with its FP16 over 50 prompts; stored beside it",
    )
    add_check_options(ck)
    ck.set_defaults(func=cmd_check)


# -- helpers ---------------------------------------------------------------------------------


def _store(a: argparse.Namespace) -> Store:
    from dolly_desktop.models.store import Store

    return Store(Path(a.store).expanduser() if a.store else None)


def _keep_free(a: argparse.Namespace) -> int:
    if a.keep_free < 0:
        raise DollyError(f"--keep-free must be 0 or more; got {a.keep_free:g}.")
    return int(a.keep_free * GB)


def _int4(a: argparse.Namespace, precision: Precision) -> Int4Options | None:
    from dolly_desktop.models.convert.compress import Int4Options
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


class _Reporter:
    """Progress of a long command, as a person or a program wants it: JSON lines on stdout
    (--json), else a tqdm bar on stderr when that is a terminal, else nothing."""

    def __init__(self, json_lines: bool, out: TextIO, err: TextIO) -> None:
        self.json_lines, self.out, self.err = json_lines, out, err
        self.bar_wanted = not json_lines and err.isatty()
        self._bar: tqdm | None = None
        self._bytes = False  # the bar counts bytes (a download), else a fraction of the job

    def stage(self, stage: str, fraction: float) -> None:
        """The store's `Progress` callback."""
        if self.json_lines:
            if stage != "done":  # the store's own end; `done` below says what was installed
                self._line(stage=stage, fraction=round(fraction, 4))
        elif self.bar_wanted:
            self._show(stage, fraction, total=1.0, bytes_=False)

    def transfer(self, p: TransferProgress) -> None:
        """The store's `TransferCallback`: bytes, so the bar shows sizes, speed and ETA."""
        if self.json_lines:
            eta = None if p.eta_s is None else round(p.eta_s)
            self._line(
                stage=p.stage,
                fraction=round(p.fraction, 4),
                file=p.file,
                done=p.done_bytes,
                total=p.total_bytes,
                speed=round(p.speed_bps),
                eta=eta,
            )
        elif self.bar_wanted:
            label = f"{p.stage} {p.file}".strip()
            self._show(label, p.done_bytes, p.total_bytes, bytes_=True, initial=p.done_bytes)

    def done(self, models: list[InstalledModel]) -> int:
        self.close()
        if self.json_lines:
            installed = [m.label for m in models]
            self._line(stage="done", fraction=1.0, path=str(models[-1].path), installed=installed)
        for m in models:
            print(f"Installed {m.label} ({format_bytes(m.size_bytes)}) in {m.path}", file=self.err)
        return 0

    def stopped(self, what: str) -> int:
        """Ctrl-C: the bar ends where it was, and one line says what became of the job."""
        self.close()
        print(f"dolly-desktop: {what}", file=self.err)
        return EXIT_INTERRUPTED

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _show(self, desc: str, n: float, total: float, bytes_: bool, initial: int = 0) -> None:
        """Move the bar to `n`, made on first use; a new stage (or file) is drawn at once."""
        if self._bar is None or self._bytes != bytes_:
            self.close()
            self._bytes = bytes_
            if bytes_:  # tqdm's own rate and ETA, over this run's bytes only (initial)
                kw: dict[str, Any] = dict(unit="B", unit_scale=True, initial=initial)
            else:
                kw = dict(bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}")
            from tqdm import tqdm  # here: the window imports this module too, and needs no tqdm

            self._bar = tqdm(total=total, desc=desc, file=self.err, dynamic_ncols=True, **kw)
        relabel = self._bar.desc != desc
        if relabel:
            self._bar.set_description_str(desc, refresh=False)
        self._bar.update(n - self._bar.n)
        if relabel:
            self._bar.refresh()

    def _line(self, **fields: Any) -> None:
        self.out.write(json.dumps(fields) + "\n")
        self.out.flush()


@contextlib.contextmanager
def _reporting(a: argparse.Namespace) -> Iterator[_Reporter]:
    """A reporter for the command; meanwhile whatever libraries print goes to stderr."""
    report = _Reporter(a.json, sys.stdout, sys.stderr)
    logs = _logs_above_the_bar(sys.stderr) if report.bar_wanted else contextlib.nullcontext()
    try:
        with contextlib.redirect_stdout(sys.stderr), logs:
            yield report
    finally:
        report.close()


@contextlib.contextmanager
def _logs_above_the_bar(err: TextIO) -> Iterator[None]:
    """Log lines meant for the terminal are written above the bar instead of into it. (tqdm's
    logging_redirect_tqdm does this too, but drops the handler's level: INFO lines would show.)"""
    from tqdm import tqdm

    class Above(io.TextIOBase):
        def write(self, s: str) -> int:
            tqdm.write(s, file=err, end="")
            return len(s)

    console = [
        h
        for h in logging.getLogger().handlers
        # The console handler (logs.QuietStreamHandler), not the log file's (a FileHandler).
        if isinstance(h, logging.StreamHandler)
        and not isinstance(h, logging.FileHandler)
        and h.stream is err
    ]
    before = [h.setStream(Above()) for h in console]
    try:
        yield
    finally:
        for h, stream in zip(console, before, strict=True):
            h.setStream(stream)


# -- commands --------------------------------------------------------------------------------


def cmd_list(a: argparse.Namespace) -> int:
    from dolly_desktop.models.checks import read_check

    store = _store(a)
    installed = store.list()
    if a.available:
        if a.refresh:
            from dolly_desktop.models.hub.catalog import refresh

            try:
                refresh(a.endpoint)
            except DollyError as e:  # offline, or no usable answer: the cached list, one line
                print(f"dolly-desktop: the Hub's list was not refreshed: {e}", file=sys.stderr)
        return _list_available(installed)
    if not installed:
        print(f"No models installed in {store.root}.", file=sys.stderr)
    for m in installed:
        rate = m.compression_line or ""
        note = f"problem: {m.problem}" if m.problem else m.source
        print(f"{m.label:<26} {format_bytes(m.size_bytes):>10}  {rate:<22} {note}".rstrip())
        check = read_check(m.path)
        if check is not None:
            print(f"{'':<26} checked: {check.summary()}")
    for p in store.partial_downloads():
        print(
            f"partial download of {p.repo_id}: {format_bytes(p.bytes_done)} so far "
            "(download again to resume, or remove --partial)"
        )
    return 0


def _list_available(installed: list[InstalledModel]) -> int:
    from dolly_desktop.models.catalog import CATALOG
    from dolly_desktop.models.hub.catalog import all_variants, cached

    here = {m.label for m in installed if m.problem is None}
    variants = all_variants()
    print(f"{'variant':<20} {'download':>12} {'RAM to run':>11}  source")
    for model in CATALOG.values():
        for v in (v for v in variants if v.model == model.name):
            source = v.repo_id or f"export from {model.source_repo}"
            mark = "  (installed)" if v.label in here else ""
            size = format_bytes(v.download_bytes)
            size = size if v.exact_size else f"~{size}"
            print(f"{v.label:<20} {size:>12} {format_bytes(v.run_ram_bytes):>11}  {source}{mark}")
        print(
            f"{model.name + '/PyTorch':<20} {format_bytes(model.checkpoint_bytes):>12} "
            f"{'':>11}  {model.source_repo} (export needs about "
            f"{format_bytes(model.export_ram_bytes)} of memory)"
        )
    hub = cached()
    when = f"the Hub's list of {hub.fetched[:10]}" if hub else "the built-in list"
    print(f"From {when}; ~ marks a size estimated from dolly-v2-3b (refresh: --refresh).")
    return 0


def cmd_download(a: argparse.Namespace) -> int:
    from dolly_desktop.models.cancel import Cancelled
    from dolly_desktop.models.catalog import CHECKPOINT
    from dolly_desktop.models.folder import Precision

    variant = CHECKPOINT if a.checkpoint else Precision.parse(a.precision).value
    store = _store(a)
    with _reporting(a) as report:
        try:
            m = store.download(
                a.model,
                variant,
                repo_id=a.repo,
                revision=a.revision,
                endpoint=a.endpoint,
                progress=report.transfer,
                retries=a.retries,
                keep_free=_keep_free(a),
            )
        except (KeyboardInterrupt, Cancelled):
            return report.stopped("download stopped; run the same command again to resume.")
        return report.done([m])


def cmd_export(a: argparse.Namespace) -> int:
    from dolly_desktop.models.folder import Precision

    store = _store(a)
    precision = Precision.parse(a.precision)
    int4 = _int4(a, precision)
    src = store.resolve_checkpoint(a.src)
    with _reporting(a) as report:
        try:
            m = store.export(src, precision, int4, a.name, report.stage, keep_free=_keep_free(a))
        except KeyboardInterrupt:
            return report.stopped("export stopped; nothing was installed.")
        return report.done([m])


def cmd_compress(a: argparse.Namespace) -> int:
    from dolly_desktop.models.folder import Precision

    store = _store(a)
    precision = Precision.parse(a.precision)
    int4 = _int4(a, precision)
    name = a.name.removesuffix("/FP16")
    with _reporting(a) as report:
        try:
            m = store.compress(name, precision, int4, report.stage, keep_free=_keep_free(a))
        except KeyboardInterrupt:
            return report.stopped("compression stopped; nothing was installed.")
        return report.done([m])


def cmd_import(a: argparse.Namespace) -> int:
    from dolly_desktop.models.folder import Precision

    store = _store(a)
    plan = store.plan_import(Path(a.src), a.name, a.precision)
    with _reporting(a) as report:
        try:
            if plan.kind == "checkpoint":  # importing a checkpoint means exporting it
                precision = Precision.parse(a.precision or "INT4")
                int4 = _int4(a, precision)
                models = [
                    store.export(plan.src, precision, int4, plan.name, report.stage, _keep_free(a))
                ]
            else:
                models = store.import_folder(
                    plan.src, plan.name, a.precision, report.stage, keep_free=_keep_free(a)
                )
        except KeyboardInterrupt:
            return report.stopped("import stopped; what was being copied was not installed.")
        return report.done(models)


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
