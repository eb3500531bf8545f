"""This process's memory, from /proc (Linux): resident set split into anonymous memory and
file-backed (mmap'd weights) pages, and the peak, which can be reset between phases."""

from __future__ import annotations

from pathlib import Path

GB = 1e9


def status() -> dict[str, float]:
    """VmRSS, VmHWM (peak), RssAnon and RssFile of this process, in GB."""
    out: dict[str, float] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(rest.split()[0]) * 1024 / GB  # kB
    return out


def peak_rss_gb() -> float:
    # VmHWM, not ru_maxrss: the latter keeps the parent's high-water mark across fork+exec.
    return status()["VmHWM"]


def reset_peak() -> None:
    """Start a new peak-RSS window (Linux >= 4.0: writing 5 to clear_refs resets VmHWM)."""
    Path("/proc/self/clear_refs").write_text("5")
