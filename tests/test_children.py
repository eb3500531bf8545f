"""The app's own child processes (dolly_desktop/children.py): from source `python -m MODULE`,
from a frozen bundle the bundle itself with the child's flag, which cli.main dispatches to the
child's function. Every child the app starts is in the one table."""

from __future__ import annotations

import importlib
import sys

import pytest

from dolly_desktop import cli
from dolly_desktop.children import CHILDREN, self_command
from dolly_desktop.generation.engines import batching
from dolly_desktop.generation.tuning import child as calibration
from dolly_desktop.models.convert import jobs


def started_commands(frozen: bool, monkeypatch) -> dict[str, list[str]]:
    """The command each of the app's child launchers builds (the real ones: existing tests
    start the export and batching children from source for real)."""
    if frozen:
        monkeypatch.setattr(sys, "frozen", True, raising=False)
    request = jobs.JobRequest(kind="compress", store="/store", precision="INT4", src="m")
    return {
        "jobs": jobs.child_command(request),
        "calibration": calibration.child_command(calibration.Request("/m", (40, 256))),
        "batching": batching.child_command(7),
    }


def test_from_source_each_child_is_its_module(monkeypatch):
    got = started_commands(False, monkeypatch)
    modules = {cmd[2] for cmd in got.values()}
    assert all(cmd[:2] == [sys.executable, "-m"] for cmd in got.values())
    assert modules == {module for module, _ in CHILDREN.values()}
    assert got["batching"][3:] == ["7"]


def test_a_frozen_bundle_starts_itself_and_dispatches_each_flag(monkeypatch):
    got = started_commands(True, monkeypatch)
    assert {cmd[1] for cmd in got.values()} == set(CHILDREN)
    assert all(cmd[0] == sys.executable for cmd in got.values())
    # cli.main hands each flag's arguments to that child's function.
    ran = []
    for module, function in CHILDREN.values():
        monkeypatch.setattr(
            importlib.import_module(module),
            function,
            lambda argv, m=module: ran.append((m, argv)) or 0,
        )
    for cmd in got.values():
        assert cli.main(cmd[1:]) == 0
    assert sorted(ran) == sorted((CHILDREN[cmd[1]][0], cmd[2:]) for cmd in got.values())


def test_a_module_that_is_not_a_child_is_refused_in_a_bundle(monkeypatch):
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    with pytest.raises(ValueError, match="not one of the app's children"):
        self_command("dolly_desktop.cli")
