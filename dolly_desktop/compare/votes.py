"""Blind A/B votes: which answer a person preferred when the names were hidden, kept as one
tally per pair of variants (or models) in the data folder (`compare-votes.json`).

A vote among two answers counts for that pair; among three, the preferred one wins against
each of the other two, and a tie is a tie for every pair. The file is written to a temporary
sibling and renamed, so a reader sees the old tally or the new one; a damaged file is set aside
(`compare-votes.json.damaged-<time>`) and a new tally started, never silently overwritten.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from dolly_desktop import paths
from dolly_desktop.atomic import written_file
from dolly_desktop.errors import DollyError

log = logging.getLogger(__name__)

VOTES_FILE = "compare-votes.json"
FORMAT = 1


@dataclass(frozen=True)
class PairTally:
    """Votes between two labels (dolly-v2-3b/INT4, dolly-v2-3b/INT8), kept in sorted order."""

    first: str
    second: str
    first_wins: int = 0
    second_wins: int = 0
    ties: int = 0

    @property
    def votes(self) -> int:
        return self.first_wins + self.second_wins + self.ties

    def wins(self, label: str) -> int:
        if label not in (self.first, self.second):
            raise DollyError(f"{label} is not one of {self.first} and {self.second}.")
        return self.first_wins if label == self.first else self.second_wins

    def sentence(self) -> str:
        """`INT4 vs INT8, 6 blind votes: INT4 better 1, INT8 better 3, 2 ties`."""
        a, b = short_labels([self.first, self.second])
        votes = f"{self.votes} blind vote{'' if self.votes == 1 else 's'}"
        ties = f"{self.ties} tie{'' if self.ties == 1 else 's'}"
        wins = f"{a} better {self.first_wins}, {b} better {self.second_wins}"
        return f"{a} vs {b}, {votes}: {wins}, {ties}"


def short_labels(labels: Sequence[str]) -> list[str]:
    """Variants of one model by their variant alone (INT4, INT8); anything else in full."""
    parts = [label.rpartition("/") for label in labels]
    if len({name for name, _, _ in parts}) == 1 and all(sep for _, sep, _ in parts):
        return [variant for _, _, variant in parts]
    return list(labels)


def votes_path() -> Path:
    return paths.data_dir() / VOTES_FILE


def _key(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def read_votes(path: Path | None = None) -> dict[tuple[str, str], PairTally]:
    """Every pair's tally; empty when there is no file yet. A file that cannot be read as a
    tally is set aside (one log line) and the tally starts again."""
    path = path or votes_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("not a tally of this version")
        pairs = [PairTally(**p) for p in data["pairs"]]
        if any(min(p.first_wins, p.second_wins, p.ties) < 0 for p in pairs):
            raise ValueError("a negative count")
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, KeyError) as e:
        aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        log.warning("setting %s aside as %s: %s", path, aside.name, e)
        try:
            os.replace(path, aside)
        except OSError as moved:
            raise DollyError(f"The blind-vote tally {path} cannot be read or moved: {moved}") from e
        return {}
    return {(p.first, p.second): p for p in pairs}


def tally(a: str, b: str, path: Path | None = None) -> PairTally:
    """The tally between `a` and `b` (zero when they have never been voted on)."""
    first, second = _key(a, b)
    return read_votes(path).get((first, second), PairTally(first, second))


def record_vote(
    labels: Sequence[str], winner: str | None, path: Path | None = None
) -> list[PairTally]:
    """One blind vote among the answers of `labels` (2 or 3): `winner` preferred to each other
    one, None a tie. Returns the tally of every pair the vote counted for, in `labels` order."""
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise DollyError("A vote needs two or three different answers.")
    if winner is not None and winner not in labels:
        raise DollyError(f"{winner} was not one of the answers voted on.")
    path = path or votes_path()
    votes = read_votes(path)
    counted = []
    for a, b in itertools.combinations(labels, 2):
        if winner is not None and winner not in (a, b):
            continue  # of three, the two that lost were not compared with each other
        first, second = _key(a, b)
        t = votes.get((first, second), PairTally(first, second))
        if winner is None:
            t = replace(t, ties=t.ties + 1)
        elif winner == first:
            t = replace(t, first_wins=t.first_wins + 1)
        else:
            t = replace(t, second_wins=t.second_wins + 1)
        votes[(first, second)] = t
        counted.append(t)
    _write(path, {"format": FORMAT, "pairs": [asdict(t) for t in votes.values()]})
    return counted


def _write(dest: Path, data: dict) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with written_file(dest) as out:
        json.dump(data, out, indent=1)
