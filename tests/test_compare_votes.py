"""Blind A/B tallies (compare/votes.py): per pair, three-way votes, ties, a damaged file."""

from __future__ import annotations

import json

import pytest

from dolly_desktop.compare.votes import read_votes, record_vote, short_labels, tally
from dolly_desktop.errors import DollyError

A, B, C = "dolly-v2-3b/INT4", "dolly-v2-3b/INT8", "dolly-v2-3b/FP16"


def test_a_vote_counts_for_its_pair_whatever_the_order(tmp_path):
    f = tmp_path / "votes.json"
    record_vote([A, B], B, f)
    record_vote([B, A], B, f)
    record_vote([A, B], None, f)
    t = tally(B, A, f)
    assert (t.wins(A), t.wins(B), t.ties, t.votes) == (0, 2, 1, 3)
    assert t.sentence() == "INT4 vs INT8, 3 blind votes: INT4 better 0, INT8 better 2, 1 tie"
    assert tally(A, C, f).votes == 0


def test_of_three_the_winner_beats_both_and_a_tie_ties_every_pair(tmp_path):
    f = tmp_path / "votes.json"
    counted = record_vote([A, B, C], C, f)
    assert len(counted) == 2 and tally(A, B, f).votes == 0  # the two losers: not compared
    assert tally(A, C, f).wins(C) == 1 and tally(B, C, f).wins(C) == 1
    record_vote([A, B, C], None, f)
    assert [tally(x, y, f).ties for x, y in ((A, B), (A, C), (B, C))] == [1, 1, 1]


def test_bad_votes_change_nothing(tmp_path):
    f = tmp_path / "votes.json"
    record_vote([A, B], A, f)
    before = f.read_bytes()
    for labels, winner in (([A], A), ([A, A], A), ([A, B], C)):
        with pytest.raises(DollyError):
            record_vote(labels, winner, f)
    assert f.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["votes.json"]


DAMAGED = [
    "{not json",
    json.dumps({"format": 99, "pairs": []}),
    json.dumps({"format": 1, "pairs": [{"first": A}]}),
]


@pytest.mark.parametrize("content", DAMAGED)
def test_a_damaged_tally_is_set_aside_not_overwritten(tmp_path, content):
    f = tmp_path / "votes.json"
    f.write_text(content)
    assert read_votes(f) == {}
    (aside,) = tmp_path.glob("votes.json.damaged-*")
    assert aside.read_text() == content
    record_vote([A, B], A, f)
    assert tally(A, B, f).wins(A) == 1


def test_short_labels():
    assert short_labels([A, B]) == ["INT4", "INT8"]
    assert short_labels([A, "dolly-v2-7b/FP16"]) == [A, "dolly-v2-7b/FP16"]
