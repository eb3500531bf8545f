"""Calibration in a child process: both its ends, and the engine's idle-time driver.

A child, because a prefill cannot be interrupted inside openvino-genai (the streamer is asked
only between tokens): when a request comes, killing the child frees the cores at once, so an
answer never waits for calibration nor shares the cores with it. A crash in a candidate (an
odd property on an odd CPU) takes down the child, not the app. The child writes one JSON
message per line on stdout, after PREFIX: progress, each candidate's figures as soon as they
are measured (kept by the parent, so a stopped calibration resumes where it was), then the
calibration, which it has stored. It exits when its stdin closes: the parent is gone.

    python -m dolly_desktop.generation.tuning.child REQUEST   (a frozen bundle:
    dolly-desktop --calibration-child REQUEST; cli.main routes it)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from dolly_desktop import paths
from dolly_desktop.children import self_command, start_child
from dolly_desktop.errors import DollyError
from dolly_desktop.generation.tuning.calibration import (
    DEFAULT_MIX,
    TUNED,
    Calibration,
    Figures,
    Mix,
    candidates,
    kv_candidate,
    machine_key,
    now_text,
    store,
)
from dolly_desktop.generation.tuning.cut import Plan as CutPlan
from dolly_desktop.generation.tuning.cut import copies
from dolly_desktop.generation.tuning.measure import Cancelled, Plan
from dolly_desktop.generation.tuning.rule import (
    cpu_capabilities,
    cpu_properties,
    runtime_option,
    weight_format,
)

log = logging.getLogger(__name__)

PREFIX = "@calibration "
WORK_PREFIX = "dolly-calibration-"  # the cut copies' temporary folders
STALE_WORK_S = 6 * 3600  # such a folder this old was left by an app that was killed
IDLE_DELAY_S = 3.0  # idle this long before calibrating: a script's next request comes sooner
MAX_FAILURES = 2  # a calibration that crashed this often is not tried again by this engine
IDLE_MAX_ROUNDS = 3  # the engine's calibration: turns per candidate while the budget allows
MODEL_BIN = "openvino_model.bin"
CUT_PARTS = (0, 2)  # the cuts every candidate is measured on (docs/calibration.md: why these)


@dataclass(frozen=True)
class Request:
    model: str
    mix: tuple[int, int] = (DEFAULT_MIX.prompt_tokens, DEFAULT_MIX.answer_tokens)
    done: dict[str, dict[str, Any]] = field(default_factory=dict)  # figures measured before
    spent_s: float = 0.0  # seconds earlier, stopped attempts measured for
    budget_s: float = 20.0
    long_tokens: int = 500
    max_rounds: int = 3  # turns per candidate while the budget allows
    cache_dir: str | None = None  # the engine's compiled-model cache: candidates import its blob
    # Measure on copies cut to so many layers, extrapolated (cut.py); () : the whole model.
    cut: tuple[int, ...] = CUT_PARTS
    # Candidates loaded at once (at most the cores): 1, as two at once measured no faster on
    # a shared 2-core Zen 4 (docs/calibration.md); the bench tries more.
    load_threads: int = 1
    # Where the cut copies go: a folder the parent made and removes, even after a kill (the
    # idle calibration is killed at every request); None: a temporary folder of the child's.
    work_dir: str | None = None


# -- the child's end ---------------------------------------------------------------------------


def at_once(model_dir: Path, free: int | None) -> int:
    """How many candidates to load side by side: as many copies of the weights (of the
    biggest cut, when measuring cuts) as fit in 80 % of free memory (the parent's engine holds
    its own already), at least one."""
    try:
        weights = (Path(model_dir) / MODEL_BIN).stat().st_size
    except OSError:
        return 1
    if free is None or weights <= 0:
        return 1
    return max(1, int(free * 0.8) // weights)


def calibrate_here(
    req: Request,
    progress: Callable[[str], None] | None = None,
    on_figures: Callable[[str, Figures], None] | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> Calibration:
    """Measure in this process and store the result."""
    from dolly_desktop.generation.tuning.measure import GenaiRunner, calibrate
    from dolly_desktop.models.capacity import available_memory_bytes

    model = Path(req.model)
    weights = weight_format(model)
    rule = cpu_properties(cpu_capabilities(), weights)
    base = {k: v for k, v in rule.items() if k not in TUNED}
    stage1, prior = candidates(weights, rule)
    exported_kv = runtime_option(model, "KV_CACHE_PRECISION")
    kv = lambda c: kv_candidate(c, exported_kv)  # noqa: E731
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        tmp = req.work_dir
        if tmp is None:
            with contextlib.suppress(OSError):  # none: _cuts says so, the whole model is measured
                tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix=WORK_PREFIX))
        folders, plan_cuts = _cuts(model, tmp, tuple(req.cut), progress)
        cache = Path(req.cache_dir) if req.cache_dir else None
        runner = GenaiRunner(model, base, req.long_tokens, cancelled, cache, folders)
        fit = at_once(folders[max(folders)] if folders else model, available_memory_bytes())
        plan = Plan(
            max_rounds=req.max_rounds,
            budget_s=req.budget_s,
            at_once=fit,
            load_threads=min(fit, runner.threads, req.load_threads),
        )
        done = {n: Figures(**f) for n, f in req.done.items()}
        mix = Mix(*req.mix)
        figures = calibrate(
            runner, stage1, kv, prior, mix, plan, cancelled=cancelled, progress=progress,
            done=done, on_figures=on_figures, cuts=plan_cuts,
        )  # fmt: skip
    props = {c.name: c.props for c in stage1}
    for name in figures:
        if name not in props:  # stage 2: the winner with a u8 KV cache
            winner = next(c for c in stage1 if name.startswith(c.name + ","))
            props[name] = kv(winner).props  # type: ignore[union-attr]
    cal = Calibration(
        key=machine_key(weights),
        candidates=props,
        figures=figures,
        prior=prior,
        seconds=req.spent_s + time.perf_counter() - t0,
        measured=now_text(),
        model=f"{model.parent.name}/{model.name}",
    )
    store(cal)
    return cal


def _cuts(
    model: Path,
    root: str | Path | None,
    parts: tuple[int, ...],
    progress: Callable[[str], None] | None,
) -> tuple[dict[int, Path], CutPlan | None]:
    """The model cut to each of `parts` layers, in folders under `root`, and how to
    extrapolate from them; ({}, None) to measure the whole model: no cuts asked, a model of
    no more layers than the biggest cut, or a graph cut.py does not know."""
    say = progress or (lambda text: None)
    if len(set(parts)) < 2:
        return {}, None
    if root is None:
        say("no temporary folder for the cut copies: measuring the whole model")
        return {}, None
    say(f"cutting the model to {' and '.join(map(str, sorted(set(parts))))} layers")
    try:
        got = copies(model, Path(root), parts)
    except (OSError, RuntimeError) as e:  # no room for the copies (OpenVINO raises RuntimeError)
        say(f"could not write the cut copies ({str(e).strip()[:200]}): measuring the whole model")
        log.warning("calibration: cutting %s failed, measuring the whole model: %s", model, e)
        return {}, None
    if got is None:
        say(
            "no cut of this model saves time (a graph cut.py does not know, or too few layers):"
            " measuring the whole model"
        )
        log.info("calibration: %s not cut, measuring the whole model", model)
        return {}, None
    folders, layers = got
    return folders, CutPlan(layers, tuple(folders))


def _emit(**msg: Any) -> None:
    print(PREFIX + json.dumps(msg), flush=True)


def _exit_with_parent() -> None:
    """The parent holds our stdin open: EOF means it is gone, and so must we be."""
    try:
        sys.stdin.read()
    finally:
        os._exit(3)


def child_main(argv: Sequence[str]) -> int:
    # Candidates side by side must each keep their kernels, as the engine bounds it per process.
    os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = "1024"
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    try:
        req = Request(**json.loads(argv[0]))
        cal = calibrate_here(
            req,
            progress=lambda text: _emit(progress=text),
            on_figures=lambda name, f: _emit(figures=[name, asdict(f)]),
        )
    except Exception as e:
        log.exception("calibration failed")
        _emit(error=str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        return 1
    _emit(calibration=cal.to_dict())
    return 0


# -- the parent's end ---------------------------------------------------------------------------


def _work_dir() -> str | None:
    """A new folder for a child's cut copies (None: none could be made, the child tries its
    own), after removing those that killed apps left behind."""
    root = Path(tempfile.gettempdir())
    with contextlib.suppress(OSError):
        for old in root.glob(WORK_PREFIX + "*"):
            if time.time() - old.stat().st_mtime > STALE_WORK_S:
                shutil.rmtree(old, ignore_errors=True)
    try:
        return tempfile.mkdtemp(prefix=WORK_PREFIX)
    except OSError:
        return None


def child_command(req: Request) -> list[str]:
    return self_command("dolly_desktop.generation.tuning.child", json.dumps(asdict(req)))


class CalibrationJob:
    """One calibration child. `cancel()` kills it at once (safe from any thread, also before
    `start()`); the figures it sent stay in `figures` for the next attempt."""

    def __init__(self, req: Request, progress: Callable[[str], None] | None = None) -> None:
        self.req = req
        self.progress = progress
        self.figures: dict[str, Figures] = {}
        self._proc: subprocess.Popen[str] | None = None
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._stderr: deque[str] = deque(maxlen=20)
        self._result: Calibration | None = None
        self._error: str | None = None
        self._t0 = 0.0
        self.elapsed = 0.0
        self._work: str | None = None  # the cut copies' folder, removed when the child ends

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        with self._lock:
            if self._cancelled.is_set():
                raise Cancelled()
            self._work = _work_dir()
            self._t0 = time.perf_counter()
            req = self.req if self._work is None else replace(self.req, work_dir=self._work)
            try:
                self._proc = start_child(child_command(req), subprocess.PIPE)
            except OSError:  # no child: no one else will remove its folder
                if self._work is not None:
                    shutil.rmtree(self._work, ignore_errors=True)
                    self._work = None
                raise
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for line in self._proc.stderr:
            if line.strip():
                self._stderr.append(line.rstrip())

    def wait(self) -> Calibration:
        """The stored calibration; Cancelled if killed by `cancel()`; DollyError if it failed
        or died."""
        proc = self._proc
        if proc is None:
            raise RuntimeError("start() first")
        assert proc.stdout is not None
        for line in proc.stdout:
            self._line(line)
        rc = proc.wait()
        self._remove_work()
        self.elapsed = time.perf_counter() - self._t0
        if self._cancelled.is_set():
            raise Cancelled()
        if rc == 0 and self._result is not None:
            return self._result
        why = self._error or (f"stopped by signal {-rc}" if rc < 0 else None)
        why = why or (self._stderr[-1] if self._stderr else f"exit code {rc}")
        raise DollyError(f"Calibration failed: {why}")

    def _line(self, line: str) -> None:
        if not line.startswith(PREFIX):
            return
        try:
            msg = json.loads(line[len(PREFIX) :])
        except ValueError:
            return
        if "progress" in msg and self.progress is not None:
            self.progress(msg["progress"])
        elif "figures" in msg:
            name, f = msg["figures"]
            self.figures[name] = Figures(**f)
        elif "calibration" in msg:
            self._result = Calibration.from_dict(msg["calibration"])
        elif "error" in msg:
            self._error = msg["error"]

    def cancel(self) -> None:
        self._cancelled.set()
        with self._lock:
            proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            if os.name == "nt":
                proc.kill()
            else:
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self._remove_work()
        self.elapsed = time.perf_counter() - self._t0

    def _remove_work(self) -> None:
        with self._lock:
            work, self._work = self._work, None
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


def run_calibration(
    model_dir: Path,
    mix: Mix = DEFAULT_MIX,
    progress: Callable[[str], None] | None = None,
    budget_s: float = 20.0,
    long_tokens: int = 500,
    max_rounds: int = 3,
    cache_dir: Path | None = None,
    cut: tuple[int, ...] = CUT_PARTS,
) -> Calibration:
    """Calibrate now, in a child, and wait (the CLI, the bench). Ctrl+C stops it, storing
    nothing. `cache_dir`: the compiled-model cache (default: the app's). `cut`: the cuts to
    measure on (): the whole model)."""
    req = Request(
        str(Path(model_dir)), (mix.prompt_tokens, mix.answer_tokens),
        budget_s=budget_s, long_tokens=long_tokens, max_rounds=max_rounds,
        cache_dir=str(cache_dir or paths.compiled_cache_dir()), cut=cut,
    )  # fmt: skip
    job = CalibrationJob(req, progress)
    job.start()
    try:
        return job.wait()
    except KeyboardInterrupt:
        job.cancel()
        raise


class IdleCalibration:
    """The engine's calibration: started after IDLE_DELAY_S of idleness, killed when a request
    comes (`busy`), resumed at the next idle time with the figures already measured. When it
    finishes, `on_done(calibration)` runs on its thread. A failure leaves nothing stored and
    the engine on its rule; after MAX_FAILURES it is not tried again."""

    def __init__(
        self,
        model_dir: Path,
        mix: Mix,
        on_done: Callable[[Calibration], None],
        delay_s: float | None = None,  # None: IDLE_DELAY_S
        cache_dir: Path | None = None,
    ) -> None:
        self.model_dir, self.mix, self.delay_s = Path(model_dir), mix, delay_s
        self.cache_dir = cache_dir
        self.on_done = on_done
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._job: CalibrationJob | None = None
        self._figures: dict[str, Figures] = {}
        self._spent = 0.0
        self.failures = 0
        self.finished = False
        self._closed = False
        self.started = threading.Event()  # set while a child runs (tests wait on it)
        self.settled = threading.Event()  # finished, and on_done has returned

    @property
    def job(self) -> CalibrationJob | None:
        return self._job

    def idle(self) -> None:
        with self._lock:
            if self._closed or self.finished or self.failures >= MAX_FAILURES:
                return
            if self._timer is not None:
                self._timer.cancel()
            delay = IDLE_DELAY_S if self.delay_s is None else self.delay_s
            self._timer = threading.Timer(delay, self._start)
            self._timer.daemon = True
            self._timer.start()

    def busy(self) -> None:
        """A request: stop at once, keeping what was measured."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            job, self._job = self._job, None
            self.started.clear()
        if job is not None:
            job.cancel()
            self._keep(job)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.busy()

    def _keep(self, job: CalibrationJob) -> None:
        with self._lock:
            self._figures.update(job.figures)
            self._spent += job.elapsed

    def _start(self) -> None:
        with self._lock:
            if self._closed or self._job is not None or self.finished:
                return
            req = Request(
                str(self.model_dir), (self.mix.prompt_tokens, self.mix.answer_tokens),
                done={n: asdict(f) for n, f in self._figures.items()}, spent_s=self._spent,
                max_rounds=IDLE_MAX_ROUNDS,
                cache_dir=str(self.cache_dir) if self.cache_dir else None,
            )  # fmt: skip
            job = self._job = CalibrationJob(req)
            try:
                job.start()
            except OSError as e:
                self._job = None
                self.failures = MAX_FAILURES
                log.warning("calibration could not start: %s", e)
                return
            self.started.set()
        threading.Thread(target=self._follow, args=(job,), name="calibration", daemon=True).start()

    def _follow(self, job: CalibrationJob) -> None:
        try:
            cal = job.wait()
        except Cancelled:
            return
        except DollyError as e:
            with self._lock:
                if self._job is job:
                    self._job = None
                self.failures += 1
                self.started.clear()
            self._keep(job)
            log.warning("%s; the engine keeps its settings", e)
            return
        with self._lock:
            if self._job is not job:
                return
            self._job = None
            self.finished = True  # no other attempt starts
            self.started.clear()
        log.info("calibration done in %.1f s: %s", cal.seconds, cal.choice(self.mix))
        try:
            self.on_done(cal)
        finally:
            self.settled.set()


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
