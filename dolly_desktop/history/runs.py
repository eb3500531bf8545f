"""Run and record: the one path by which the window and the CLI answer an instruction.

The text reaches `on_text` first and the history second, so what is saved was always shown.
A history that cannot be written never stops the run: `History` says so once in its notice
(`take_notice`), and the answer comes all the same. A history locked by another process never
slows it: the save is queued and retried in the background, and if it is given up after the
run, `notify` hears it then.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from dolly_desktop.documents.index import Hit
from dolly_desktop.generation.engine import EngineBase, GenerationResult, TextCallback
from dolly_desktop.generation.params import GenerationParams
from dolly_desktop.history.store import History

Notify = Callable[[str], None]


def source_records(hits: Sequence[Hit]) -> list[dict[str, Any]]:
    """The chunks a passage was made of, as the history keeps them: where each came from and
    its exact text, so an answer stays explainable after its files change."""
    return [
        {"collection": h.collection, "file": h.path, "rel": h.rel, "page": h.page,
         "heading": h.heading, "text": h.text, "score": h.score}
        for h in hits
    ]  # fmt: skip


def run_and_record(
    engine: EngineBase,
    history: History,
    instruction: str,
    params: GenerationParams,
    on_text: TextCallback | None = None,
    notify: Notify | None = None,
    context: str = "",
    sources: Sequence[dict[str, Any]] = (),
) -> GenerationResult:
    """Generate with `engine` (with a passage to work from, if `context`), streaming to
    `on_text` and recording the run in `history`.

    Leaving early (cancel, an error, KeyboardInterrupt) records the run as cancelled or failed
    with the text shown so far. `notify` gets each history problem's sentence once, those
    from opening the file included, and a save given up after the run (from the saver's
    thread). `sources`: the document chunks the passage was made of, kept with the run."""
    # A random seed is chosen here, before the run, so that the history keeps the one used
    # (the window, the CLI): restoring the entry reproduces the answer.
    params = params.with_seed()
    run = history.start_run(
        instruction, params, engine.model, engine.device, context, notify, sources
    )

    def out(piece: str) -> None:
        if on_text is not None:
            on_text(piece)
        run.append(piece)

    try:
        with run:
            result = engine.generate(instruction, params, out, context=context)
            run.finish(result)
    finally:
        for sentence in history.take_notices():
            if notify is not None:
                notify(sentence)
    return result
