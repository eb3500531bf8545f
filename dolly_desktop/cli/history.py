"""`dolly-desktop history ...` subcommands: list, show, search, export, import, delete, clear."""

from __future__ import annotations

import argparse
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from dolly_desktop.atomic import written_file
from dolly_desktop.errors import DollyError
from dolly_desktop.history.store import BUSY_TIMEOUT_S, IMPORT_MAX_CHARS, Entry, History

EXIT_NOTHING_FOUND = 1  # as grep: search ran fine and matched nothing


def _open() -> History:
    """The history, with anything wrong with its file said once on stderr."""
    history = History(wait_s=BUSY_TIMEOUT_S)  # a terminal may wait for another program's lock
    for sentence in history.take_notices():
        print(f"dolly-desktop: {sentence}", file=sys.stderr)
    return history


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `history` parser; set `func` on it (see dolly_desktop/cli.py)."""
    p = sub.add_parser("history", help="list, search, export or clear past runs")
    hs = p.add_subparsers(dest="history_command", required=True, parser_class=type(p))

    ls = hs.add_parser("list", help="past runs, newest first")
    ls.add_argument("--limit", type=_count, default=50, help="at most this many (default: 50)")
    ls.set_defaults(func=cmd_list)

    show = hs.add_parser("show", help="one run in full (Markdown)")
    show.add_argument("id", type=int)
    show.set_defaults(func=cmd_show)

    search = hs.add_parser("search", help="runs whose instruction or response has these words")
    search.add_argument("text", nargs="+")
    search.add_argument("--limit", type=_count, default=50, help="at most this many (default: 50)")
    search.set_defaults(func=cmd_search)

    export = hs.add_parser("export", help="write runs as Markdown or JSON Lines")
    export.add_argument("--format", choices=("md", "jsonl"), default="md")
    export.add_argument("--id", type=int, action="append", help="only this run (repeatable)")
    export.add_argument("-o", "--output", metavar="FILE", help="write to FILE (default: stdout)")
    export.set_defaults(func=cmd_export)

    imp = hs.add_parser("import", help="add runs from a JSON Lines export")
    imp.add_argument("file", help="the .jsonl file, or - for stdin")
    imp.set_defaults(func=cmd_import)

    delete = hs.add_parser("delete", help="delete one run")
    delete.add_argument("id", type=int)
    delete.set_defaults(func=cmd_delete)

    clear = hs.add_parser("clear", help="delete all runs")
    clear.add_argument("--yes", action="store_true", help="do not ask")
    clear.set_defaults(func=cmd_clear)


def cmd_list(a: argparse.Namespace) -> int:
    entries = _open().list(limit=a.limit)
    if not entries:
        print("The history is empty.", file=sys.stderr)
    _print_rows(entries)
    return 0


def cmd_search(a: argparse.Namespace) -> int:
    text = " ".join(a.text)
    found = _open().list(limit=a.limit, query=text)
    if not found:
        print(f"Nothing in the history matches {text!r}.", file=sys.stderr)
        return EXIT_NOTHING_FOUND
    _print_rows(found)
    return 0


def cmd_show(a: argparse.Namespace) -> int:
    (entry,) = _open().entries([a.id])
    sys.stdout.write(entry.to_markdown())
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    history = _open()
    write = history.export_jsonl if a.format == "jsonl" else history.export_markdown
    if a.output is None:
        write(sys.stdout, a.id)
        return 0
    n = _write_atomically(Path(a.output), lambda out: write(out, a.id))
    print(f"Exported {n} runs to {a.output}.", file=sys.stderr)
    return 0


def cmd_import(a: argparse.Namespace) -> int:
    history = _open()
    if a.file == "-":
        n = history.import_jsonl(sys.stdin)
    else:
        with _open_export(a.file) as src:
            n = history.import_jsonl(src)
    print(f"Imported {n} runs.", file=sys.stderr)
    return 0


def cmd_delete(a: argparse.Namespace) -> int:
    history = _open()
    history.entries([a.id])  # a clear error for an id that is not there
    history.delete(a.id)
    return 0


def cmd_clear(a: argparse.Namespace) -> int:
    history = _open()
    n = history.count()
    if not a.yes:
        if not sys.stdin.isatty():
            raise DollyError(f"This deletes all {n} runs: add --yes to confirm.")
        answer = input(f"Delete all {n} runs from the history? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return 1
    history.clear()
    print(f"Deleted {n} runs.", file=sys.stderr)
    return 0


def _count(text: str) -> int:
    """A --limit: a whole number from 1 (a huge one means all)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a number of runs (1 or more)")
    return n


def _open_export(name: str) -> TextIO:
    """A history export to read: a regular file, no larger than an import may be. A device,
    a pipe or a folder is refused before anything is read (/dev/zero would never end)."""
    try:
        # O_NONBLOCK: a named pipe is opened without waiting for a writer, then refused.
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise DollyError(f"{name} cannot be read: {e.strerror}.") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DollyError(f"{name} is not a file: give a .jsonl file exported from the history.")
        if st.st_size > IMPORT_MAX_CHARS:
            raise DollyError(
                f"{name} is {st.st_size / 2**20:.0f} MiB, more than a history export can be "
                f"({IMPORT_MAX_CHARS // 2**20} MiB)."
            )
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return open(fd, encoding="utf-8")  # the caller closes it
    except BaseException:
        os.close(fd)
        raise


def _print_rows(entries: list[Entry]) -> None:
    for e in entries:
        when = e.created_at.astimezone().strftime("%Y-%m-%d %H:%M")
        model = f"{e.model.name} {e.model.precision}".strip()
        first = e.instruction.splitlines()[0] if e.instruction else ""
        if len(first) > 60:
            first = first[:59] + "…"
        print(f"{e.id}\t{when}\t{e.stop_reason}\t{model}\t{first}")


def _write_atomically(dest: Path, write: Callable[[TextIO], int]) -> int:
    """Write to a temporary sibling and rename, so a failed export leaves no half file."""
    dest = dest.expanduser()
    if not dest.parent.is_dir():
        raise DollyError(f"There is no folder {dest.parent} to write {dest.name} into.")
    with written_file(dest) as out:
        return write(out)
