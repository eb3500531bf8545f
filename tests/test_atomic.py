"""atomic.written_file: the old file or the new, never half, and no temporary left behind."""

from __future__ import annotations

import pytest

from dolly_desktop.atomic import written_file


def test_a_written_file_replaces_the_old_one_whole(tmp_path):
    dest = tmp_path / "votes.json"
    dest.write_text("old")
    with written_file(dest) as out:
        out.write("new\n")
        assert dest.read_text() == "old"  # not visible until the block ends
    assert dest.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["votes.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    dest = tmp_path / "history.md"
    dest.write_text("old")
    with pytest.raises(KeyboardInterrupt), written_file(dest) as out:
        out.write("half")
        raise KeyboardInterrupt  # a cancel or Ctrl+C mid-write
    assert dest.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["history.md"]
