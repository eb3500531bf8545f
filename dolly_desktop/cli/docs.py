"""`dolly-desktop docs ...`: collections of your own files for Dolly to answer from (add,
index, list, show, search, remove), and what `generate --docs` uses to find its passage."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from dolly_desktop.cli.options import EXIT_INTERRUPTED
from dolly_desktop.errors import DollyError

EXIT_NOTHING_FOUND = 1  # as grep: search ran fine and matched nothing
TOKENIZER_FILE = "tokenizer.json"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("docs", help="collections of your own files for Dolly to answer from")
    ds = p.add_subparsers(dest="docs_command", required=True, parser_class=type(p))

    add = ds.add_parser("add", help="create a collection, or add folders and files to one")
    add.add_argument("name")
    add.add_argument("paths", nargs="+", metavar="PATH", help="folders and files")
    add.set_defaults(func=cmd_add)

    for verb in ("index", "reindex"):
        ix = ds.add_parser(verb, help="bring a collection's index up to date with its files")
        ix.add_argument("name")
        ix.add_argument(
            "--model",
            help="the model whose tokenizer counts the chunks: a folder or an installed name "
            "(default: any installed Dolly; they share one tokenizer)",
        )
        ix.set_defaults(func=cmd_index)

    ls = ds.add_parser("list", help="the collections: folders, files, chunks, skipped")
    ls.set_defaults(func=cmd_list)

    show = ds.add_parser("show", help="one collection: its files, chunks and skipped files")
    show.add_argument("name")
    show.set_defaults(func=cmd_show)

    search = ds.add_parser("search", help="the chunks that best match a question, ranked")
    search.add_argument("name", help="a collection, or several comma-separated")
    search.add_argument("query")
    search.add_argument("--limit", type=int, default=5, help="at most this many (default: 5)")
    search.set_defaults(func=cmd_search)

    rm = ds.add_parser("remove", help="forget a collection (your files are not touched)")
    rm.add_argument("name")
    rm.set_defaults(func=cmd_remove)


def add_docs_options(g: argparse.ArgumentParser) -> None:
    """generate's --docs and --docs-fallback."""
    g.add_argument(
        "--docs",
        metavar="NAME[,NAME]",
        help="answer from these document collections: the best-matching passages go into the "
        "prompt, and the sources are printed after the answer",
    )
    g.add_argument(
        "--docs-fallback",
        action="store_true",
        help="with --docs: when nothing matches, answer without a passage (default: stop)",
    )


def split_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise DollyError("Name at least one collection (dolly-desktop docs list).")
    return list(dict.fromkeys(names))


def _index():  # documents loads only for the commands that use it
    from dolly_desktop.documents.index import DocIndex

    return DocIndex()


def find_tokenizer(model: str | None) -> Path:
    """tokenizer.json of `--model`, or of any installed model."""
    from dolly_desktop.models.choice import resolve_model
    from dolly_desktop.models.store import Store

    folders = [resolve_model(model)] if model else [m.path for m in Store().list() if m.runnable]
    for f in folders:
        if (f / TOKENIZER_FILE).is_file():
            return f / TOKENIZER_FILE
    if model:
        raise DollyError(f"{folders[0]} has no {TOKENIZER_FILE} to count tokens with.")
    raise DollyError(
        f"No installed model has a {TOKENIZER_FILE} to count tokens with: install one "
        "(dolly-desktop models download dolly-v2-3b) or pass --model FOLDER."
    )


def cmd_add(a: argparse.Namespace) -> int:
    with _index() as ix:
        roots = ix.add(a.name, a.paths)
    print(f"collection {a.name}: " + ", ".join(roots))
    print(f"index it with: dolly-desktop docs index {a.name}")
    return 0


def cmd_index(a: argparse.Namespace) -> int:
    from dolly_desktop.documents.chunk import TokenCounter

    with _index() as ix:
        ix.roots(a.name)  # an unknown name is said before the tokenizer loads
        counter = TokenCounter(find_tokenizer(a.model))
        show, close = _progress_display()
        try:
            report = ix.index(a.name, counter, progress=show)
        except KeyboardInterrupt:
            close()
            print("interrupted: the files indexed so far are kept", file=sys.stderr)
            return EXIT_INTERRUPTED
        close()
    print(report.line())
    for path, reason in report.skipped:
        print(f"skipped {path}: {reason}")
    return 0


def _progress_display() -> tuple[Callable, Callable[[], None]]:
    """tqdm on a terminal (files, MB, rate, skipped); nothing otherwise."""
    if not sys.stderr.isatty():
        return (lambda _p: None), (lambda: None)
    from tqdm import tqdm

    bar: list = []

    def show(p) -> None:  # p: documents.index.Progress
        if not bar:
            bar.append(tqdm(total=p.bytes_total, unit="B", unit_scale=True, desc="indexing"))
        b = bar[0]
        b.update(p.bytes_done - b.n)
        b.set_postfix_str(f"{p.files_done}/{p.files_total} files, {p.skipped} skipped")

    def close() -> None:
        if bar:
            bar[0].close()

    return show, close


def cmd_list(a: argparse.Namespace) -> int:
    with _index() as ix:
        names = ix.names()
        if not names:
            print("no collections yet: dolly-desktop docs add NAME FOLDER")
        for name in names:
            i = ix.info(name)
            print(
                f"{name}\t{i.files} files\t{i.chunks} chunks\t{i.bytes / 1e6:.1f} MB\t"
                f"{i.skipped} skipped\t" + ", ".join(i.roots)
            )
    return 0


def cmd_show(a: argparse.Namespace) -> int:
    with _index() as ix:
        i = ix.info(a.name)
        print(f"{a.name}: {i.files} files, {i.chunks} chunks, {i.bytes / 1e6:.1f} MB")
        for r in i.roots:
            print(f"folder {r}")
        for rel, size, chunks in ix.files(a.name):
            print(f"  {rel}\t{size} bytes\t{chunks} chunks")
        for path, reason in ix.skipped(a.name):
            print(f"skipped {path}: {reason}")
    return 0


def cmd_search(a: argparse.Namespace) -> int:
    with _index() as ix:
        hits = ix.search(split_names(a.name), a.query, max(1, a.limit))
    if not hits:
        print("no chunk matches", file=sys.stderr)
        return EXIT_NOTHING_FOUND
    for n, h in enumerate(hits, 1):
        print(f"[{n}] {h.anchor()}  (bm25 {h.score:.2f}, {h.tokens} tokens)")
        print("    " + " ".join(h.text.split())[:300])
    return 0


def cmd_remove(a: argparse.Namespace) -> int:
    with _index() as ix:
        ix.remove(a.name)
    print(f"collection {a.name} removed (your files are untouched)")
    return 0


class DocsQuestion:
    """generate --docs: search before the model loads (nothing found stops at once), pack
    once the engine can count, print the sources after the answer."""

    def __init__(self, names_arg: str, instruction: str, fallback: bool) -> None:
        from dolly_desktop.documents.retrieve import CANDIDATES, Bm25Retriever

        self.names = split_names(names_arg)
        self.instruction = instruction
        self.fallback = fallback
        with _index() as ix:
            for n in self.names:
                ix.roots(n)
            self.hits = Bm25Retriever(ix).search(self.names, instruction, CANDIDATES)
        self.sources: Sequence = []
        if not self.hits:
            self._nothing(f"Nothing in {', '.join(self.names)} matches the instruction")

    def _nothing(self, why: str) -> None:
        if not self.fallback:
            raise DollyError(f"{why}; add --docs-fallback to answer without a passage.")
        print(f"dolly-desktop: {why}: answering without a passage.", file=sys.stderr)

    def passage(self, count_tokens: Callable[[str], int], context_length: int, max_new: int) -> str:
        from dolly_desktop.documents.retrieve import pack

        if not self.hits:
            return ""
        p = pack(self.hits, self.instruction, count_tokens, context_length, max_new)
        if not p.hits:
            self._nothing(
                f"No passage from {', '.join(self.names)} fits beside the instruction and "
                f"{max_new} new tokens"
            )
        self.sources = p.hits
        return p.text

    def source_records(self) -> list[dict]:
        """The chunks used, as the history keeps them (with their text)."""
        return [
            {"collection": h.collection, "file": h.path, "rel": h.rel, "page": h.page,
             "heading": h.heading, "text": h.text, "score": h.score}
            for h in self.sources
        ]  # fmt: skip

    def print_sources(self) -> None:
        if self.sources:
            print("\nSources:")
            for n, h in enumerate(self.sources, 1):
                print(f"[{n}] {h.anchor()}")
