"""The result of `dolly-desktop models check`, kept beside the model it measured.

One small JSON file in the variant's own folder (`<store>/dolly-v2-3b/INT4/CHECK_FILE`): it goes
when the variant is removed and never outlives a re-install, and genai ignores it. Written to a
temporary sibling and renamed, so a reader sees the old result or the new one, never half a
file. The settings dialog and `models list` read it back with `read_check`.
"""

from __future__ import annotations

import json
import logging
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dolly_desktop.atomic import written_file

log = logging.getLogger(__name__)

CHECK_FILE = "dolly-desktop-check.json"
FORMAT = 1
_CPUINFO = Path("/proc/cpuinfo")


def cpu_name() -> str:
    """This computer's CPU model name ("AMD EPYC 9R14 96-Core Processor"), as well as the
    system tells it."""
    try:
        for line in _CPUINFO.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Processor", "cpu model") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


@dataclass(frozen=True)
class CheckRecord:
    model: str  # dolly-v2-3b
    variant: str  # INT4
    reference: str  # the reference's label, dolly-v2-3b/FP16
    top1: float  # share of the reference's answer tokens that were also this one's top-1
    mean_kl: float  # nats per token, KL(reference || this)
    median_first_divergence: float | None  # token where greedy answers part; None: never
    prompts: int
    tokens: int
    max_new_tokens: int
    prompt_set: str  # "built-in" or the prompts file's name
    date: str  # ISO 8601, local time with its offset
    cpu: str  # cpu_name() where it was measured
    categories: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0
    format: int = FORMAT

    @property
    def reference_variant(self) -> str:
        name, _, variant = self.reference.rpartition("/")
        return variant if name == self.model else self.reference

    def summary(self, cpu_here: str | None = None) -> str:
        """`INT4: 93% of tokens as FP16, measured on this computer, 50 prompts, 2026-12-03`."""
        here = cpu_name() if cpu_here is None else cpu_here
        where = "this computer" if self.cpu == here else self.cpu
        return (
            f"{self.variant}: {self.top1:.0%} of tokens as {self.reference_variant}, measured on "
            f"{where}, {self.prompts} prompts, {self.date[:10]}"
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)


def read_check(folder: Path) -> CheckRecord | None:
    """The stored check of the model in `folder`; None when there is none, or it cannot be
    read (one log line: a damaged file is no result)."""
    path = Path(folder) / CHECK_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("ignoring %s: %s", path, e)
        return None
    try:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise TypeError(f"format {data.get('format') if isinstance(data, dict) else '?'}")
        record = CheckRecord(**data)
        if not (0.0 <= float(record.top1) <= 1.0) or int(record.prompts) < 1:
            raise ValueError("figures out of range")
    except (TypeError, ValueError) as e:
        log.warning("ignoring %s: %s", path, e)
        return None
    return record


def write_check(folder: Path, record: CheckRecord) -> Path:
    """Store `record` in `folder`, atomically."""
    folder = Path(folder)
    dest = folder / CHECK_FILE
    with written_file(dest) as out:
        out.write(record.to_json())
    return dest
