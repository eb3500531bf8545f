"""Measuring the candidates: short decode runs and a ~500-token prefill per candidate, in turns
in one process, wall and CPU time.

The loop (`calibrate`) is pure: it asks a Runner to load candidates and run them, and reads
a clock around each run, so tests drive it with a fake clock (tests/test_calibration.py).
`GenaiRunner` is the real one, on openvino-genai.

Candidates loaded together are measured in turns (reversed every other round): on a shared
machine, runs next to each other in time see the same load (issue 27: +-15 % between
processes, a few % in turns). When copies of the weights do not fit in free memory side by
side, candidates are loaded one at a time (`at_once`). Stage 1 measures the dynamic
quantization groups; stage 2 the winner with a u8 KV cache, beside the winner again, and puts
it on stage 1's scale by their per-field ratio. With cuts (cut.py), each candidate is measured
on copies of the model cut to a few layers, in turns with the others, and extrapolated.
"""

from __future__ import annotations

import logging
import os
import statistics
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from dolly_desktop.generation.tuning.calibration import (
    Candidate,
    Figures,
    Mix,
    choose,
)
from dolly_desktop.generation.tuning.cut import Plan as CutPlan
from dolly_desktop.generation.tuning.cut import extrapolate

log = logging.getLogger(__name__)

Mark = tuple[float, float]  # (wall, CPU) seconds
Clock = Callable[[], Mark]
Progress = Callable[[str], None]


def process_clock() -> Mark:
    """Wall time, and the CPU time of every thread of this process."""
    return time.perf_counter(), time.process_time()


class Cancelled(Exception):
    """The calibration was asked to stop."""


class Runner(Protocol):
    short_tokens: int
    long_tokens: int
    threads: int  # the cores inference may use

    def load(self, candidate: Candidate) -> Any:
        """Compile the candidate and run one inference (the CPU plugin repacks the weights
        in the first): what `decode`, `prefill` and `free` take."""

    def decode(self, handle: Any, tokens: int, mark: Callable[[], None]) -> None:
        """Generate `tokens` tokens after the short prompt, calling `mark` at each."""

    def prefill(self, handle: Any, mark: Callable[[], None]) -> None:
        """Prefill the long prompt, calling `mark` at its first token."""

    def free(self, handle: Any) -> None: ...


@dataclass(frozen=True)
class Plan:
    decode_tokens: int = 16
    rounds: int = 1  # turns every candidate gets
    max_rounds: int = 3  # more while the budget allows
    budget_s: float = 20.0
    at_once: int = 8  # candidates loaded side by side (memory)
    # Candidates loaded at the same time, in threads: the CPU plugin's weight repack at the
    # first inference ran on about one core here (wall = CPU time), so two loads might overlap.
    load_threads: int = 1


@dataclass
class _Turns:
    decode: list[tuple[float, float, float, float]]  # decode s, decode CPU s, short s, CPU s
    prefill: list[tuple[float, float]]  # long s, CPU s

    def figures(self, short_tokens: int, long_tokens: int, threads: int) -> Figures:
        med = lambda xs: float(statistics.median(xs))  # noqa: E731
        d, p = self.decode, self.prefill
        return Figures(
            decode_s=med(x[0] for x in d),
            decode_cpu_s=med(x[1] for x in d),
            short_tokens=short_tokens,
            short_s=med(x[2] for x in d),
            short_cpu_s=med(x[3] for x in d),
            long_tokens=long_tokens,
            long_s=med(x[0] for x in p),
            long_cpu_s=med(x[1] for x in p),
            turns=min(len(d), len(p)),
            threads=threads,
        )


class _Loop:
    def __init__(
        self,
        runner: Runner,
        plan: Plan,
        clock: Clock,
        cancelled: Callable[[], bool],
        progress: Progress | None,
    ) -> None:
        self.runner, self.plan, self.clock = runner, plan, clock
        self.cancelled, self._say = cancelled, progress or (lambda text: None)
        self.start, self.start_cpu = clock()
        self.live: dict[str, Any] = {}  # loaded candidates, by name

    def say(self, text: str) -> None:
        """Progress, with the wall and CPU seconds so far: on a busy machine the CPU time
        tells what the calibration itself costs."""
        wall, cpu = self.clock()
        self._say(f"{text} (after {wall - self.start:.1f} s, CPU {cpu - self.start_cpu:.1f} s)")

    def check(self) -> None:
        if self.cancelled():
            raise Cancelled()

    def elapsed(self) -> float:
        return self.clock()[0] - self.start

    def decode_turn(self, handle: Any) -> tuple[float, float, float, float]:
        marks: list[Mark] = []
        t0 = self.clock()
        self.runner.decode(handle, self.plan.decode_tokens, lambda: marks.append(self.clock()))
        self.check()
        if len(marks) < 2:
            raise RuntimeError(f"decode gave {len(marks)} tokens, not {self.plan.decode_tokens}")
        (w0, c0), (w1, c1) = marks[0], marks[-1]
        steps = len(marks) - 1
        return (w1 - w0) / steps, (c1 - c0) / steps, w0 - t0[0], c0 - t0[1]

    def prefill_turn(self, handle: Any) -> tuple[float, float]:
        marks: list[Mark] = []
        t0 = self.clock()
        self.runner.prefill(handle, lambda: marks.append(self.clock()))
        self.check()
        if not marks:
            raise RuntimeError("the long prompt gave no token")
        return marks[0][0] - t0[0], marks[0][1] - t0[1]

    def load(self, c: Candidate) -> Any:
        if c.name not in self.live:
            self.check()
            self.say(f"loading {c.name}")
            self.live[c.name] = self.runner.load(c)
        return self.live[c.name]

    def load_all(self, cands: Sequence[Candidate]) -> None:
        """Load these, `load_threads` at a time (each into `live` as soon as it is loaded, so
        that a failure leaves the loaded ones to `free`)."""
        n = min(self.plan.load_threads, len(cands))
        if n <= 1:
            for c in cands:
                self.load(c)
            return
        with ThreadPoolExecutor(n, thread_name_prefix="calibration-load") as pool:
            for _ in pool.map(self.load, cands):
                pass

    def free(self, keep: Collection[str] = ()) -> None:
        for name in [n for n in self.live if n not in keep]:
            self.runner.free(self.live.pop(name))

    def group(self, group: Sequence[Candidate]) -> dict[str, Figures]:
        """Load the group (what is not loaded yet), measure it in turns. It stays loaded: the
        next group frees it, so that stage 2 finds the winner still loaded."""
        self.free(keep={c.name for c in group})  # the next group loads after these are gone
        self.load_all([c for c in group if c.name not in self.live])
        handles = {c.name: self.live[c.name] for c in group}
        turns = {c.name: _Turns([], []) for c in group}
        rounds = 0
        while True:
            t_round = self.elapsed()
            for c in group if rounds % 2 == 0 else group[::-1]:
                self.check()
                self.say(f"measuring {c.name}, turn {rounds + 1}")
                turns[c.name].decode.append(self.decode_turn(handles[c.name]))
                self.check()
                turns[c.name].prefill.append(self.prefill_turn(handles[c.name]))
            rounds += 1
            took = self.elapsed() - t_round
            if rounds >= self.plan.rounds and (
                rounds >= self.plan.max_rounds or self.elapsed() + took > self.plan.budget_s
            ):
                break
        r = self.runner
        threads = getattr(r, "threads", 0)
        return {n: t.figures(r.short_tokens, r.long_tokens, threads) for n, t in turns.items()}

    def stage(
        self,
        cands: Sequence[Candidate],
        on_figures: Callable[[str, Figures], None] | None = None,
        unit: int = 1,
    ) -> dict[str, Figures]:
        """Groups of `at_once`, each group's figures reported as soon as it is measured.
        `unit`: so many candidates in a row belong together (one candidate's cuts, whose
        difference is multiplied along the layers): a group holds whole units when it can."""
        out: dict[str, Figures] = {}
        size = max(1, self.plan.at_once)
        if 1 < unit <= size:
            size -= size % unit
        for i in range(0, len(cands), size):
            group = self.group(cands[i : i + size])
            out.update(group)
            for name, f in group.items():
                if on_figures is not None:
                    on_figures(name, f)
        return out


def calibrate(
    runner: Runner,
    stage1: Sequence[Candidate],
    kv: Callable[[Candidate], Candidate | None],
    prior: str,
    mix: Mix,
    plan: Plan = Plan(),
    clock: Clock = process_clock,
    cancelled: Callable[[], bool] = lambda: False,
    progress: Progress | None = None,
    done: Mapping[str, Figures] | None = None,
    on_figures: Callable[[str, Figures], None] | None = None,
    cuts: CutPlan | None = None,
) -> dict[str, Figures]:
    """Every candidate's figures: stage 1's, then the winner's with a u8 KV cache. `done`
    holds figures an earlier, stopped attempt measured: those candidates are not measured
    again. Raises Cancelled when `cancelled()` turns true (checked between runs, and by the
    runner at each token); any other failure propagates. Nothing is stored here.

    With `cuts`, every candidate is measured on copies of the model cut to a few layers (the
    runner loads `candidate.layers`), all parts in turns, and its figures are extrapolated to
    the whole model (cut.extrapolate). `done` and `on_figures` then hold the parts' figures,
    by cut.part_name; what is returned is on the whole model's scale."""
    loop = _Loop(runner, plan, clock, cancelled, progress)
    measured: dict[str, Figures] = dict(done or {})  # as measured: whole, or parts of cuts

    def parts(c: Candidate) -> list[Candidate]:
        return [cuts.part(c, k) for k in cuts.parts] if cuts else [c]

    def whole(c: Candidate, got: Mapping[str, Figures]) -> Figures:
        if cuts is None:
            return got[c.name]
        by_part = {p.layers: got[p.name] for p in parts(c)}
        return extrapolate(by_part, cuts.layers, cuts.note())  # type: ignore[arg-type]

    def report(name: str, f: Figures) -> None:
        measured[name] = f
        if on_figures is not None:
            on_figures(name, f)

    figures: dict[str, Figures] = {}
    try:
        todo = [p for c in stage1 for p in parts(c) if p.name not in measured]
        loop.stage(todo, report, unit=len(cuts.parts) if cuts else 1)
        figures.update({c.name: whole(c, measured) for c in stage1})
        by_name = {c.name: c for c in stage1}
        winner = by_name[choose(figures, mix, prior)]
        second = kv(winner)
        if second is not None:
            todo = [p for p in parts(second) if p.name not in measured]
            for p in [p for p in todo if p.layers == 0]:
                # A cut of no layers has no KV cache: its figures are the winner's own.
                report(p.name, measured[cuts.part(winner, 0).name])  # type: ignore[union-attr]
            todo = [p for p in todo if p.layers != 0]
            if todo:
                beside = [cuts.part(winner, p.layers) for p in todo] if cuts else [winner]  # type: ignore[arg-type]
                loop.free(keep={p.name for p in beside})  # loaded still, if in the last group
                pair = loop.stage(beside + todo)  # beside the winner again: in turns
                for p in todo:
                    report(p.name, figures_on_scale(measured, pair, p.name, winner, p.layers, cuts))
            figures[second.name] = whole(second, measured)
    finally:
        loop.free()
    loop.say("measured")
    return figures


def figures_on_scale(
    measured: Mapping[str, Figures],
    pair: Mapping[str, Figures],
    name: str,
    winner: Candidate,
    layers: int | None,
    cuts: CutPlan | None,
) -> Figures:
    """A stage-2 part's figures on stage 1's scale: times the winner's stage-1 figures by the
    ratio of the two measured side by side."""
    w = cuts.part(winner, layers).name if cuts is not None and layers is not None else winner.name
    return measured[w].scaled(pair[name], pair[w])


# -- the real runner ------------------------------------------------------------------------

SHORT = "Who is Dolly?"
SENTENCE = "The quick brown fox jumps over the lazy dog. "  # 10 tokens
HEAD = "Summarise this text. "
LONG_TOKENS = 500


class GenaiRunner:
    """Candidates as openvino-genai pipelines (the engine's stateful SDPA one), fed token ids,
    so that tokenizing is not timed.

    `cuts`: the folders of copies cut to so many layers, which candidates with `layers` load.
    With `cache_dir` (the engine's compiled-model cache), every whole candidate imports the blob
    the engine's load left there instead of compiling the IR: OpenVINO's cache key leaves out
    DYNAMIC_QUANTIZATION_GROUP_SIZE and KV_CACHE_PRECISION, and the CPU plugin applies them
    when it imports (greedy tokens of a blob compiled with group 32 and an f16 cache, imported
    with group 0 and u8, equal a fresh compile's with group 0 and u8)."""

    def __init__(
        self,
        model_dir: Path,
        base: Mapping[str, Any],
        long_tokens: int = LONG_TOKENS,
        cancelled: Callable[[], bool] = lambda: False,
        cache_dir: Path | None = None,
        cuts: Mapping[int, Path] | None = None,
    ) -> None:
        import numpy as np
        import openvino as ov
        import openvino_genai as ov_genai

        from dolly_desktop.generation.prompt import build_prompt

        self._ov, self._genai, self._np = ov, ov_genai, np
        self.model_dir = Path(model_dir)
        self.base = dict(base)
        self.cache_dir = cache_dir
        self.cuts = dict(cuts or {})  # folders of the model cut to so many layers (cut.py)
        self._constructing = threading.Lock()
        self.cancelled = cancelled
        tok = ov_genai.Tokenizer(str(self.model_dir))
        ids = lambda text: [int(i) for i in tok.encode(build_prompt(text)).input_ids.data[0]]  # noqa: E731
        self._short = ids(SHORT)
        per = (len(ids(HEAD + SENTENCE * 10)) - len(ids(HEAD))) / 10
        n = max(1, round((long_tokens - len(ids(HEAD))) / per))
        self._long = ids(HEAD + SENTENCE * n)
        self.short_tokens, self.long_tokens = len(self._short), len(self._long)
        # The CPU plugin's latency default: one thread per core this process may run on.
        affinity = getattr(os, "sched_getaffinity", None)
        self.threads = len(affinity(0)) if affinity else (os.cpu_count() or 1)

    def _tensor(self, ids: list[int]) -> Any:
        return self._ov.Tensor(self._np.array([ids], dtype=self._np.int64))

    def _config(self, pipe: Any, tokens: int) -> Any:
        cfg = pipe.get_generation_config()
        cfg.max_new_tokens, cfg.do_sample, cfg.ignore_eos = tokens, False, True
        return cfg

    def load(self, candidate: Candidate) -> Any:
        props = {**self.base, **candidate.props}
        if candidate.layers is not None:
            folder = self.cuts[candidate.layers]  # compiled afresh: no cuts in the app's cache
        else:
            folder = self.model_dir
            if self.cache_dir is not None:
                props["CACHE_DIR"] = str(self.cache_dir)
        with self._constructing:  # genai loads its tokenizer library racily (parallel loads)
            pipe = self._genai.LLMPipeline(str(folder), "CPU", **props)
        pipe.generate(self._tensor(self._short), self._config(pipe, 1))  # the repack
        return pipe

    def _run(self, pipe: Any, ids: list[int], tokens: int, mark: Callable[[], None]) -> None:
        genai, cancelled = self._genai, self.cancelled

        class Marks(genai.StreamerBase):
            def write(self, token: Any) -> Any:
                mark()
                status = genai.StreamingStatus
                return status.CANCEL if cancelled() else status.RUNNING

            def end(self) -> None:
                pass

        pipe.generate(self._tensor(ids), self._config(pipe, tokens), Marks())

    def decode(self, handle: Any, tokens: int, mark: Callable[[], None]) -> None:
        self._run(handle, self._short, tokens, mark)

    def prefill(self, handle: Any, mark: Callable[[], None]) -> None:
        self._run(handle, self._long, 1, mark)

    def free(self, handle: Any) -> None:
        del handle  # the caller drops its reference too: the pipeline goes with the last
