"""`dolly-desktop compare`: one instruction through two or three models, one after another (fair
timing on a CPU), with the memory each engine took and its agreement with a reference.

Memory first: every model's run memory (weights plus the runtime, catalog.RUN_OVERHEAD) is set
against what the system has available. All load at once when they fit together, one at a time
(each freed before the next loads) when they do not, and nothing loads when even the largest
alone does not fit. The reference is the highest precision among those compared (the first
given, on a tie), or, given the store (the window), the model's FP16 when it is installed, as
`models check` chooses; agreement is measured after the timed runs, teacher-forced over the
reference's greedy answer (compare/agreement.py).
"""

from __future__ import annotations

import gc
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dolly_desktop.compare.agreement import Prompt, Summary, Tokens, measure
from dolly_desktop.compare.check import choose_reference
from dolly_desktop.errors import DollyError
from dolly_desktop.generation.engine import ModelRef
from dolly_desktop.generation.params import GenerationParams
from dolly_desktop.generation.prompt import build_prompt
from dolly_desktop.models.capacity import available_memory_bytes, check_memory, format_bytes
from dolly_desktop.models.catalog import RUN_OVERHEAD
from dolly_desktop.models.choice import PRECISION_RANK, resolve_model, run_ram_bytes
from dolly_desktop.models.folder import inspect_model_dir
from dolly_desktop.models.store import Store

TOGETHER = "together"
ONE_AT_A_TIME = "one at a time"
MAX_MODELS = 3
_STATUS = Path("/proc/self/status")


# -- this process's memory (Linux; None elsewhere) --------------------------------------------


def _status_kb(key: str) -> int | None:
    try:
        m = re.search(rf"^{key}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(m.group(1)) * 1024 if m else None


def rss_bytes() -> int | None:
    return _status_kb("VmRSS")


def peak_rss_bytes() -> int | None:
    return _status_kb("VmHWM")


def reset_peak_rss() -> bool:
    """Start the peak (VmHWM) over from the current RSS; False where the system cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# -- what is compared -------------------------------------------------------------------------


@dataclass(frozen=True)
class Contender:
    label: str  # dolly-v2-3b/INT4, or the folder's path when it is not in the store
    path: Path
    precision: str
    run_ram: int  # bytes to run it: weights plus the runtime


def contenders(args: Sequence[str], store: Store | None = None) -> list[Contender]:
    """The `--model` arguments, resolved as `generate --model` does (folder or store name)."""
    if len(args) < 2:
        raise DollyError("Give two or three models to compare: --model A --model B.")
    if len(args) > MAX_MODELS:
        raise DollyError(f"Compare at most {MAX_MODELS} models at once; got {len(args)}.")
    store = store or Store()
    found = []
    for arg in args:
        path = resolve_model(arg, store).resolve()
        info = inspect_model_dir(path)  # a folder that is not a model: one sentence, here
        ref = ModelRef.from_folder(path)
        inside = path.parent.parent == store.root.resolve()
        label = f"{ref.name}/{ref.precision or path.name}" if inside else str(path)
        found.append(Contender(label, path, ref.precision, info.weights_bytes + RUN_OVERHEAD))
    if len({c.path for c in found}) < len(found):
        raise DollyError("The same model is named twice: compare different models or variants.")
    return found


def plan_loading(models: Sequence[Contender], available: int | None) -> str:
    """TOGETHER when all fit in `available` bytes, else ONE_AT_A_TIME; refused (one sentence)
    when the largest alone does not fit. Unknown memory (None): one at a time."""
    largest = max(models, key=lambda c: c.run_ram)
    check_memory(largest.run_ram, f"Comparing with {largest.label}", available=available)
    if available is not None and sum(c.run_ram for c in models) <= available:
        return TOGETHER
    return ONE_AT_A_TIME


def plan_sentence(models: Sequence[Contender], available: int | None, how: str) -> str:
    need = format_bytes(sum(c.run_ram for c in models))
    have = "unknown" if available is None else format_bytes(available)
    if how == TOGETHER:
        return f"Loading all {len(models)} at once: they need about {need}, {have} is available."
    return (
        f"Loading one at a time, each freed before the next: all {len(models)} would need "
        f"about {need}, {have} is available."
    )


def reference_of(models: Sequence[Contender]) -> Contender:
    """The highest precision among them; the first given on a tie."""
    return max(models, key=lambda c: PRECISION_RANK.get(c.precision, -1))


def reference_for(
    models: Sequence[Contender], store: Store, available: int | None = None
) -> Contender:
    """The reference a person expects: when all are variants of one installed model, the one
    `models check` would take for the highest of them (its FP16 if installed, compared or
    not, else the highest precision there); otherwise, or when that one would not fit in
    `available` bytes alone, the highest precision among them (reference_of)."""
    top = reference_of(models)
    installed = {m.path.resolve(): m for m in store.list() if m.runnable}
    mine = [installed.get(c.path.resolve()) for c in models]
    if any(m is None for m in mine) or len({m.name for m in mine if m}) != 1:
        return top
    try:
        ref = choose_reference(store, installed[top.path.resolve()], None)
    except DollyError:  # nothing above the highest compared: it is the reference
        return top
    for c in models:
        if c.path.resolve() == ref.path.resolve():
            return c
    outside = Contender(ref.label, ref.path.resolve(), ref.variant, run_ram_bytes(ref))
    if available is not None and outside.run_ram > available:
        return top
    return outside


# -- running them -----------------------------------------------------------------------------


@dataclass
class Outcome:
    label: str
    path: Path
    text: str = ""
    tokens: int = 0
    tokens_per_s: float = 0.0
    ttft_s: float = 0.0
    total_s: float = 0.0
    load_s: float = 0.0
    stop: str = ""
    peak_rss: int | None = None  # bytes this engine added at its peak, load and run
    reference: bool = False
    agreement: Summary | None = None
    agreement_note: str = ""  # why there is none

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.label,
            "path": str(self.path),
            "reference": self.reference,
            "text": self.text,
            "tokens": self.tokens,
            "tokens_per_s": round(self.tokens_per_s, 3),
            "ttft_s": round(self.ttft_s, 4),
            "total_s": round(self.total_s, 4),
            "load_s": round(self.load_s, 3),
            "stop": self.stop,
            "peak_rss_bytes": self.peak_rss,
            "agreement": self.agreement.as_dict() if self.agreement else None,
            "agreement_note": self.agreement_note,
        }


@dataclass
class Comparison:
    loading: str
    available: int | None
    reference: str
    outcomes: list[Outcome] = field(default_factory=list)


EngineFactory = Callable[[Path], Any]  # a folder -> an engine (generation.engines.local.Engine)
Events = Callable[[str, str], None]  # (label, what: "loading" | "generating" | text piece)


def _engine(path: Path) -> Any:
    from dolly_desktop.generation.engines.local import Engine

    return Engine(path, "CPU")


def run_comparison(
    models: Sequence[Contender],
    instruction: str,
    context: str,
    params: GenerationParams,
    on_text: Callable[[str, str], None] | None = None,
    on_stage: Callable[[str, str], None] | None = None,
    available: int | None = None,
    measure_agreement: bool = True,
    make_engine: EngineFactory = _engine,
    cancel: threading.Event | None = None,
    reference: Contender | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> Comparison:
    """Each model answers in turn; then agreement with the reference. `on_stage(label,
    stage)` hears "loading", "generating", "agreement"; `on_text(label, piece)` the text;
    `on_outcome` each model's outcome as soon as it has answered. `reference` (default:
    reference_of) may be one of `models` or another model, measured only for agreement.
    `cancel` stops the answer being generated at its next piece and loads nothing more; the
    outcomes so far are returned, without agreement."""
    build_prompt(instruction, context)  # refuse bad input before anything loads
    available = available_memory_bytes() if available is None else available
    how = plan_loading(models, available)
    ref = reference or reference_of(models)
    stopped = cancel.is_set if cancel is not None else lambda: False
    result = Comparison(how, available, ref.label)
    stage = on_stage or (lambda label, what: None)
    engines: dict[Path, Any] = {}
    base: dict[Path, int | None] = {}
    loaded_extra: dict[Path, int | None] = {}

    def load(c: Contender) -> Any:
        stage(c.label, "loading")
        gc.collect()
        base[c.path] = rss_bytes()
        reset_peak_rss()
        engine = make_engine(c.path)
        now, peak, before = rss_bytes(), peak_rss_bytes(), base[c.path]
        loaded_extra[c.path] = None if now is None or before is None else now - before
        engines[c.path] = engine
        return engine, None if peak is None or before is None else peak - before

    load_peaks: dict[Path, int | None] = {}

    def piece_for(label: str, engine: Any) -> Callable[[str], None]:
        def piece(text: str) -> None:
            # The engine clears its own flag when an answer starts: a cancel that came just
            # before would be lost. Checked at every piece, it stops the answer there.
            if stopped():
                engine.cancel()
            if on_text is not None:
                on_text(label, text)

        return piece

    try:
        if how == TOGETHER:
            for c in models:
                if stopped():
                    break
                _, load_peaks[c.path] = load(c)
        for c in models:
            if stopped():
                break
            if c.path not in engines:
                _, load_peaks[c.path] = load(c)
                if stopped():
                    break
            engine = engines[c.path]
            stage(c.label, "generating")
            before_run = rss_bytes()
            reset_peak_rss()
            r = engine.generate(instruction, params, piece_for(c.label, engine), context=context)
            run_peak = peak_rss_bytes()
            extra = loaded_extra[c.path]
            during = None if run_peak is None or before_run is None else run_peak - before_run
            peaks = [p for p in (load_peaks[c.path], None if extra is None or during is None
                                 else extra + during) if p is not None]  # fmt: skip
            result.outcomes.append(Outcome(
                label=c.label, path=c.path, text=r.text, tokens=r.generated_tokens,
                tokens_per_s=r.tokens_per_s, ttft_s=r.ttft_s, total_s=r.total_s,
                load_s=engine.load_s + getattr(engine, "warmup_s", 0.0),
                stop=r.stop_reason.value, peak_rss=max(peaks) if peaks else None,
                reference=c.path == ref.path,
            ))  # fmt: skip
            if on_outcome is not None:
                on_outcome(result.outcomes[-1])
            if how == ONE_AT_A_TIME:
                engines.pop(c.path).close()
                gc.collect()
    finally:
        for engine in engines.values():
            engine.close()
        engines.clear()
        gc.collect()
    if measure_agreement and len(result.outcomes) == len(models) and not stopped():
        _agreement(result, models, ref, instruction, context, params, stage, cancel)
    return result


def _agreement(
    result: Comparison,
    models: Sequence[Contender],
    ref: Contender,
    instruction: str,
    context: str,
    params: GenerationParams,
    stage: Callable[[str, str], None],
    cancel: threading.Event | None,
) -> None:
    ref_tokens = Tokens(ref.path)
    others = []
    for c, out in zip(models, result.outcomes, strict=True):
        if c.path == ref.path:
            continue
        if Tokens(c.path).same_as(ref_tokens):
            others.append((c, out))
        else:
            out.agreement_note = (
                f"another tokenizer than {ref.label}'s: compared on text, speed and memory only"
            )
    if not others:
        return
    ids = ref_tokens.encode(build_prompt(instruction, context))
    steps = max(1, min(params.max_new_tokens, ref_tokens.context_length - len(ids)))
    stage(ref.label, "agreement")
    found = measure(ref.path, [c.path for c, _ in others], [Prompt(ids)], steps,
                    stops=ref_tokens.stops, cancel=cancel)  # fmt: skip
    for (_, out), a in zip(others, found, strict=True):
        out.agreement = a.overall
