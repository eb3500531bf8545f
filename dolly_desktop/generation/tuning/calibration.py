"""Calibration: which CPU properties answer fastest on this machine, for this person's answers.

The family rule (rule.py) was measured on a few CPUs and did not carry over to a third (issue
27: on an Intel without AMX exposed, group 128 traded 26 % faster long prefill for 8 % slower
decode). So on the first load of a model on a machine, a few candidates are measured
(measure.py) and the one with the least expected time of a whole answer wins:

    expected = time to first token for the prompt length + (answer length - 1) x decode time

for the person's own mix (the median prompt and answer lengths of their last runs; with no
history, a short question and a 256-token answer). The time to first token is interpolated
between the short prompt's and the ~500-token prompt's. Generation does not read history
(layering): the callers pass the mix (`mix_from_runs`).

The figures, not the choice, are cached (per CPU model string, OpenVINO version and weight
format, in the app's data folder), so that a later load chooses again for the mix then.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import os
import statistics
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

from dolly_desktop import paths
from dolly_desktop.atomic import written_file
from dolly_desktop.generation.tuning.rule import WeightFormat, weight_format

log = logging.getLogger(__name__)

DQ = "DYNAMIC_QUANTIZATION_GROUP_SIZE"
KV = "KV_CACHE_PRECISION"
TUNED = (DQ, KV)  # the properties calibration chooses; a caller that sets one is obeyed
DQ_OPENVINO = 32  # the CPU plugin's own group, where the rule sets none
# Candidates whose expected times are this close are a tie: measurement noise on a shared
# machine is larger (issue 27: +-15 % between processes, a few % in turns). A tie keeps the
# rule's choice, else the one with less CPU time.
TIE = 0.02
# Measured with under this share of its cores (other work on the machine: issue 27's VMs are
# shared), the CPU time decides: it moves far less with other work than wall time does.
BUSY = 0.6
CACHE_VERSION = 1
LAST_RUNS = 50  # how many of the person's last runs make the mix
# What engines do unless told (Engine's `calibrate`): "use" a stored calibration (a bare
# process: tests, scripts, benches, a one-shot generate), also measure while "idle" (the CLI
# sets it around the window and the server), or keep the rule ("off": --no-calibration).
MODES = ("off", "use", "idle")
_mode = "use"


def mode() -> str:
    return _mode


@contextmanager
def calibrating(how: str) -> Iterator[None]:
    """Engines made inside use `how` (one of MODES) unless told otherwise."""
    global _mode
    if how not in MODES:
        raise ValueError(f"calibration mode {how!r} is not one of {MODES}")
    before, _mode = _mode, how
    try:
        yield
    finally:
        _mode = before


@dataclass(frozen=True)
class Mix:
    """The lengths of a typical answer: prompt tokens (Dolly's template included) and
    generated tokens."""

    prompt_tokens: int
    answer_tokens: int


# A short question in Dolly's template (~30 tokens of template, ~10 of question), 256 tokens.
DEFAULT_MIX = Mix(40, 256)


def mix_from_runs(runs: Iterable[tuple[int | None, int | None]]) -> Mix:
    """The median prompt and answer lengths of the last runs, as (input_tokens,
    generated_tokens) pairs newest first (history's entries); runs without counts are left
    out. No runs: DEFAULT_MIX."""
    pairs = [(p, a) for p, a in runs if p and a][:LAST_RUNS]
    if not pairs:
        return DEFAULT_MIX
    return Mix(
        int(statistics.median(p for p, _ in pairs)), int(statistics.median(a for _, a in pairs))
    )


@dataclass(frozen=True)
class Candidate:
    """A configuration to measure: its name and the properties it sets over the rule's."""

    name: str
    props: dict[str, Any] = field(default_factory=dict)
    layers: int | None = None  # measured on a copy cut to this many layers (cut.py); None: whole


def dq_name(group: int) -> str:
    return "dq off" if group == 0 else f"dq {group}"


def candidates(
    weights: WeightFormat | None, rule_props: Mapping[str, Any]
) -> tuple[list[Candidate], str]:
    """The first stage's candidates for these weights, and which of them the rule chose.

    Dynamic quantization (activations quantized to int8 in groups, for INT4/INT8 weights):
    off, OpenVINO's 32, the weights' own group, and 512. FP16 weights have none to choose.
    The KV cache's precision is the second stage (`kv_candidate`), on the first's winner."""
    rule_group = int(rule_props.get(DQ, DQ_OPENVINO))
    if weights is None:
        return [Candidate("as exported", {})], "as exported"
    groups = [0, DQ_OPENVINO]
    if weights.group is not None:
        groups.append(weights.group)
    groups += [512, rule_group]
    unique = list(dict.fromkeys(groups))
    return [Candidate(dq_name(g), {DQ: g}) for g in unique], dq_name(rule_group)


def kv_candidate(winner: Candidate, exported_kv: str | None) -> Candidate | None:
    """The winner with a u8 KV cache, unless the export already asks for u8. (OpenVINO's CPU
    default is u8, but optimum-intel's exports ask for f16, which OpenVINO then applies.)"""
    if (exported_kv or "").lower() == "u8":
        return None
    return Candidate(f"{winner.name}, KV u8", {**winner.props, KV: "u8"})


@dataclass(frozen=True)
class Figures:
    """One candidate's medians over its turns: wall and CPU (all threads) seconds."""

    decode_s: float  # per generated token, after the first
    decode_cpu_s: float
    short_tokens: int  # the short prompt, and its time to first token
    short_s: float
    short_cpu_s: float
    long_tokens: int  # the ~500-token prompt, and its time to first token
    long_s: float
    long_cpu_s: float
    turns: int = 1
    threads: int = 0  # the cores the process could use (0: not known)
    cut: str = ""  # how cuts of the model gave these whole-model figures ("": measured whole)

    def utilization(self) -> float | None:
        """The share of its cores the process had during the long prefill (a prefill keeps
        them all busy on a quiet machine)."""
        if not self.threads or self.long_s <= 0:
            return None
        return self.long_cpu_s / (self.long_s * self.threads)

    def expected_s(self, mix: Mix, cpu: bool = False) -> float:
        """Expected seconds of a whole answer for `mix` (CPU seconds with `cpu`)."""
        short, long_, decode = (
            (self.short_cpu_s, self.long_cpu_s, self.decode_cpu_s)
            if cpu
            else (self.short_s, self.long_s, self.decode_s)
        )
        span = max(1, self.long_tokens - self.short_tokens)
        per_token = (long_ - short) / span
        first = max(0.0, short + (mix.prompt_tokens - self.short_tokens) * per_token)
        return first + max(0, mix.answer_tokens - 1) * decode

    def scaled(self, num: Figures, den: Figures) -> Figures:
        """These figures times num/den, field by field: a candidate measured in turns beside
        another (den) in a later stage, put on this stage's scale."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.endswith("_s"):
                d = getattr(den, f.name)
                out[f.name] = v * getattr(num, f.name) / d if d > 0 else v
            else:
                out[f.name] = v
        return Figures(**out)


def busy(figures: Mapping[str, Figures]) -> bool:
    """Whether other work held the cores while these were measured: the prefills' median
    utilization under BUSY. Then wall times say more about that work than the candidates."""
    shares = [u for f in figures.values() if (u := f.utilization()) is not None]
    return bool(shares) and statistics.median(shares) < BUSY


def choose(figures: Mapping[str, Figures], mix: Mix, prior: str | None = None) -> str:
    """The candidate with the least expected time of a whole answer for `mix`: in wall time,
    or in CPU time if the machine was busy while measuring. Within TIE of the best, the prior
    choice stays; else the other measure decides."""
    if not figures:
        raise ValueError("no figures to choose from")
    by_cpu = busy(figures)
    first = {n: f.expected_s(mix, cpu=by_cpu) for n, f in figures.items()}
    best = min(first.values())
    close = [n for n, t in first.items() if t <= best * (1 + TIE)]
    if prior in close:
        return prior  # type: ignore[return-value]
    return min(close, key=lambda n: figures[n].expected_s(mix, cpu=not by_cpu))


# -- the key and the cache --------------------------------------------------------------------


class Key(NamedTuple):
    """What a calibration holds for: figures from another CPU, another OpenVINO or another
    weight format say nothing here."""

    cpu: str
    openvino: str
    weights: str

    def text(self) -> str:
        return f"{self.cpu} | OpenVINO {self.openvino} | {self.weights}"


def weights_label(weights: WeightFormat | None) -> str:
    if weights is None:
        return "uncompressed"
    return f"INT{weights.bits} " + (f"g{weights.group}" if weights.group else "per channel")


@functools.cache
def cpu_model() -> str:
    """The CPU as OpenVINO names it, with family and model where /proc/cpuinfo tells (OpenVINO
    says only "AMD EPYC" for a whole line of CPUs), and the threads this process may use."""
    import openvino as ov

    name = str(ov.Core().get_property("CPU", "FULL_DEVICE_NAME"))
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            k, _, v = line.partition(":")
            info.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    if "cpu family" in info and "model" in info:
        name += f", family {info['cpu family']} model {info['model']}"
    try:
        threads = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        threads = os.cpu_count() or 1
    return f"{name}, {threads} threads"


def machine_key(weights: WeightFormat | None) -> Key:
    import openvino as ov

    return Key(cpu_model(), ov.get_version(), weights_label(weights))


@dataclass
class Calibration:
    """What was measured for one key: the candidates' properties and figures."""

    key: Key
    candidates: dict[str, dict[str, Any]]  # name -> properties over the rule's
    figures: dict[str, Figures]
    prior: str  # the rule's choice
    seconds: float  # how long the measuring took
    measured: str  # ISO date and time (UTC)
    model: str = ""  # the model it was measured on, for display

    def choice(self, mix: Mix) -> str:
        return choose(self.figures, mix, self.prior)

    def properties(self, mix: Mix) -> dict[str, Any]:
        return dict(self.candidates[self.choice(mix)])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["key"] = list(self.key)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Calibration:
        return cls(
            key=Key(*d["key"]),
            candidates={n: dict(p) for n, p in d["candidates"].items()},
            figures={n: Figures(**f) for n, f in d["figures"].items()},
            prior=d["prior"],
            seconds=float(d["seconds"]),
            measured=d["measured"],
            model=d.get("model", ""),
        )


def now_text() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def cache_file() -> Path:
    return paths.data_dir() / "calibration.json"


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:  # unreadable: measured again, not a crash
        log.warning("calibration cache %s unreadable, ignored: %s", path, e)
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def load(key: Key, path: Path | None = None) -> Calibration | None:
    """The calibration stored for `key`, or None."""
    entry = _read(path or cache_file()).get(key.text())
    if entry is None:
        return None
    try:
        return Calibration.from_dict(entry)
    except (KeyError, TypeError, ValueError) as e:
        log.warning("calibration for %s unreadable, ignored: %s", key.text(), e)
        return None


def store(cal: Calibration, path: Path | None = None) -> None:
    """Keep `cal`, replacing any for its key, atomically (atomic.written_file: a crash leaves
    the old file or the new one). Entries of another OpenVINO version
    go: an upgrade measures again. Other CPUs' stay (a portable home moves between
    machines)."""
    path = path or cache_file()
    entries = {
        k: v
        for k, v in _read(path).items()
        if isinstance(v, dict) and list(v.get("key", []))[1:2] == [cal.key.openvino]
    }
    entries[cal.key.text()] = cal.to_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    _write(path, entries)


def _write(path: Path, entries: Mapping[str, Any]) -> None:
    with written_file(path) as f:
        json.dump({"version": CACHE_VERSION, "entries": entries}, f, indent=1)


def forget(key: Key, path: Path | None = None) -> None:
    """Drop the calibration for `key` (to measure again)."""
    path = path or cache_file()
    entries = _read(path)
    if entries.pop(key.text(), None) is not None:
        _write(path, entries)


# -- what the person is shown ------------------------------------------------------------------


def table(cal: Calibration, mix: Mix) -> list[list[str]]:
    """Rows (with a header row) of the candidates' figures and expected times for `mix`."""
    chosen = cal.choice(mix)
    some = next(iter(cal.figures.values()))
    by_cpu = busy(cal.figures)
    rows = [
        [
            "candidate",
            "decode tok/s",
            "decode CPU ms/token",
            f"TTFT {some.long_tokens} tokens (s)",
            f"TTFT {some.long_tokens} CPU (s)",
            f"expected answer, {'CPU ' if by_cpu else ''}s ({mix.prompt_tokens} + "
            f"{mix.answer_tokens} tokens)",
            "",
        ]
    ]
    for name, f in cal.figures.items():
        mark = "chosen" if name == chosen else ("rule" if name == cal.prior else "")
        if name == chosen and name == cal.prior:
            mark = "chosen (= rule)"
        rows.append(
            [
                name,
                f"{1 / f.decode_s:.2f}" if f.decode_s > 0 else "-",
                f"{f.decode_cpu_s * 1000:.0f}",
                f"{f.long_s:.2f}",
                f"{f.long_cpu_s:.2f}",
                f"{f.expected_s(mix, cpu=by_cpu):.2f}",
                mark,
            ]
        )
    return rows


def sentence(cal: Calibration, mix: Mix) -> str:
    """One sentence: what was chosen, for which mix, and what it gains over the rule."""
    chosen = cal.choice(mix)
    by_cpu = busy(cal.figures)
    unit = " of CPU time" if by_cpu else ""
    t = cal.figures[chosen].expected_s(mix, cpu=by_cpu)
    what = (
        f"Calibrated on {cal.key.cpu} (OpenVINO {cal.key.openvino}, {cal.key.weights} "
        f"weights) on {cal.measured[:10]} in {cal.seconds:.0f} s: {chosen}"
    )
    for_mix = f"for {mix.prompt_tokens}-token prompts and {mix.answer_tokens}-token answers"
    note = " Other work kept the cores busy while measuring, so CPU time decided." * by_cpu
    cuts = {f.cut for f in cal.figures.values() if f.cut}
    note += "".join(f" The model's figures were {c}." for c in sorted(cuts))
    if chosen == cal.prior or cal.prior not in cal.figures:
        return f"{what}, the built-in rule's choice, {for_mix} ({t:.1f} s{unit} expected).{note}"
    r = cal.figures[cal.prior].expected_s(mix, cpu=by_cpu)
    return (
        f"{what} {for_mix}: {t:.1f} s{unit} expected against {r:.1f} s with the built-in "
        f"rule's {cal.prior}.{note}"
    )


def describe(cal: Calibration | None, mix: Mix = DEFAULT_MIX) -> str:
    """The sentence and a plain-text table of the figures (None: not calibrated yet)."""
    if cal is None:
        return "Not calibrated on this machine yet: the built-in rule's settings are used."
    rows = table(cal, mix)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return sentence(cal, mix) + "\n\n" + "\n".join(lines)


def stored(model_dir: Path) -> Calibration | None:
    """The calibration stored on this machine for this model's weight format (None: none)."""
    return load(machine_key(weight_format(Path(model_dir))))


def summary(model_dir: Path, mix: Mix = DEFAULT_MIX) -> str:
    """What Model settings shows: the stored choice and figures for this model on this
    machine, for the person's mix (the caller reads it from history: `mix_from_runs`)."""
    return describe(stored(model_dir), mix)
