"""Generation parameters: ranges and defaults (the notebook's), and their validation.

`RANGES` is the single source of truth: the GUI's spinboxes, the CLI's options and the
validation below all read it.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, NamedTuple

from dolly_desktop.errors import DollyError


class Range(NamedTuple):
    low: float
    high: float
    label: str
    step: float = 1
    integer: bool = True


RANGES: dict[str, Range] = {
    "max_new_tokens": Range(1, 1000, "max new tokens"),
    "temperature": Range(0.1, 5.0, "temperature", 0.1, False),
    "top_p": Range(0.05, 1.0, "top-p", 0.05, False),
    "top_k": Range(0, 50, "top-k"),
    "repetition_penalty": Range(1.0, 2.0, "repetition penalty", 0.05, False),
    "seed": Range(0, 2**31 - 1, "seed"),
}


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 256
    temperature: float = 0.8
    top_p: float = 0.92
    top_k: int = 0  # 0 = off
    greedy: bool = False
    repetition_penalty: float = 1.0
    seed: int | None = None  # None = a fresh random seed each run

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "greedy":
                if not isinstance(value, bool):
                    raise DollyError("greedy must be true or false.")
                continue
            if value is None and f.name == "seed":
                continue
            r = RANGES[f.name]
            ok_type = isinstance(value, int) if r.integer else isinstance(value, (int, float))
            if isinstance(value, bool) or not ok_type:
                kind = "a whole number" if r.integer else "a number"
                raise DollyError(f"{r.label} must be {kind} from {_fmt(r.low)} to {_fmt(r.high)}.")
            if not r.low <= value <= r.high:
                raise DollyError(
                    f"{r.label} must be from {_fmt(r.low)} to {_fmt(r.high)}; got {_fmt(value)}."
                )

    def with_seed(self) -> GenerationParams:
        """The parameters this run will use: a random seed chosen now when sampling asked for
        none, so that the run can be recorded with it and reproduced. Greedy needs none."""
        if self.seed is not None or self.greedy:
            return self
        return replace(self, seed=random.randrange(int(RANGES["seed"].high) + 1))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationParams:
        """Build from a mapping (settings, JSON); unknown keys are refused by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DollyError(f"unknown generation parameter: {unknown[0]}.")
        return cls(**data)


def _fmt(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"
