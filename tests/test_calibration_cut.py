"""Calibration on copies of the model cut to a few layers (issue 27, the 20 s target): the
surgery on the tiny model's real IR (2 layers), the fallback to the whole model for a graph
it does not know, and the extrapolation to the whole model, pure, with numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_calibration import FakeClock, a_calibration

from dolly_desktop.generation.tuning import calibration as cal
from dolly_desktop.generation.tuning.calibration import (
    DEFAULT_MIX,
    DQ,
    KV,
    Candidate,
    Figures,
    choose,
)
from dolly_desktop.generation.tuning.cut import Plan as CutPlan
from dolly_desktop.generation.tuning.cut import cut, extrapolate, layer_count, part_name
from dolly_desktop.generation.tuning.measure import Plan, calibrate

PROMPT = "Who is Dolly?"


def greedy(folder: Path, tokens: int = 24) -> str:
    import openvino_genai as ov_genai

    pipe = ov_genai.LLMPipeline(str(folder), "CPU", INFERENCE_PRECISION_HINT="f32")
    cfg = pipe.get_generation_config()
    cfg.max_new_tokens, cfg.do_sample, cfg.ignore_eos = tokens, False, True
    return pipe.generate(PROMPT, cfg)


def state_ids(folder: Path) -> list[str]:
    """The model's states, read back from the IR: its variables, and the ReadValue and Assign
    (sink) ops that use them, which must agree."""
    import openvino as ov

    m = ov.Core().read_model(folder / "openvino_model.xml")
    variables = sorted(v.get_info().variable_id for v in m.get_variables())
    reads = sorted(op.get_variable_id() for op in m.get_ops() if op.get_type_name() == "ReadValue")
    sinks = sorted(s.get_variable_id() for s in m.get_sinks())
    assert variables == reads == sinks
    return variables


# -- the surgery, on the tiny model (2 layers) --------------------------------------------------


def test_a_cut_keeping_every_layer_generates_what_the_model_does(tiny_models, tmp_path):
    model = tiny_models["INT4"]
    assert layer_count(model) == 2
    whole = cut(model, tmp_path / "all", 2)
    assert whole is not None
    assert state_ids(whole) == state_ids(model)
    assert greedy(whole) == greedy(model)
    # The export's runtime options (KV cache f16) and NNCF's record came along: the rule and
    # the calibration read them from the copy as from the model.
    from dolly_desktop.generation.tuning.rule import runtime_option, weight_format

    assert runtime_option(whole, "KV_CACHE_PRECISION") == "f16"
    assert weight_format(whole) == weight_format(model)
    assert sorted(p.name for p in whole.iterdir()) == sorted(p.name for p in model.iterdir())


@pytest.mark.parametrize("keep", [0, 1])
def test_a_cut_keeps_its_layers_states_and_weights_only_and_still_generates(
    tiny_models, tmp_path, keep
):
    model = tiny_models["INT4"]
    out = cut(model, tmp_path / f"{keep}", keep)
    assert out is not None
    ids = state_ids(out)
    assert len(ids) == 2 * keep  # a key and a value per layer kept
    assert all(int(i.split(".")[1]) < keep for i in ids)
    bins = [(f / "openvino_model.bin").stat().st_size for f in (out, model)]
    assert bins[0] < bins[1]
    text = greedy(out)
    assert text and text != greedy(model)  # a smaller model: another text, but a text


def test_an_unknown_graph_is_not_cut_and_the_calibration_measures_the_whole_model(
    tiny_models, tmp_path, monkeypatch
):
    """A renamed export: the final norm's name is not the one cut.py knows."""
    import shutil

    from dolly_desktop.generation.tuning.child import Request, calibrate_here

    model = shutil.copytree(tiny_models["INT4"], tmp_path / "renamed")
    xml = model / "openvino_model.xml"
    xml.write_text(xml.read_text().replace("final_layer_norm", "ln_f"))
    assert layer_count(model) is None
    assert cut(model, tmp_path / "cut", 1) is None
    assert not (tmp_path / "cut").exists()

    monkeypatch.setenv("DOLLY_DESKTOP_HOME", str(tmp_path / "home"))
    said: list[str] = []
    parts: list[str] = []
    req = Request(str(model), cut=(0, 1), max_rounds=1, budget_s=0.0)
    got = calibrate_here(req, progress=said.append, on_figures=lambda n, f: parts.append(n))
    assert any("does not know" in s and "measuring the whole model" in s for s in said), said
    assert all("@" not in n for n in parts)
    assert all(f.cut == "" for f in got.figures.values())


def test_copies_that_cannot_be_written_mean_the_whole_model(tiny_models, tmp_path, monkeypatch):
    from dolly_desktop.generation.tuning import child

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(child, "copies", full)
    said: list[str] = []
    folders, plan = child._cuts(tiny_models["INT4"], tmp_path, (0, 1), said.append)
    assert (folders, plan) == ({}, None)
    assert "No space left" in said[-1] and "measuring the whole model" in said[-1]


def test_a_model_of_no_more_layers_than_the_biggest_cut_is_measured_whole(tiny_models, tmp_path):
    from dolly_desktop.generation.tuning import child

    said: list[str] = []
    for parts in ((0, 2), (0, 3)):  # the tiny model has 2 layers
        folders, plan = child._cuts(tiny_models["INT4"], tmp_path, parts, said.append)
        assert (folders, plan) == ({}, None)
        assert "measuring the whole model" in said[-1]
    assert list(tmp_path.iterdir()) == []
    folders, plan = child._cuts(tiny_models["INT4"], None, (0, 1), said.append)
    assert (folders, plan) == ({}, None) and "no temporary folder" in said[-1]


def test_a_calibration_killed_mid_way_leaves_no_copies(tiny_models, tmp_path, monkeypatch):
    """The idle calibration is killed at every request: the parent removes the child's cut
    copies (and those a killed app left behind)."""
    import os
    import tempfile
    import time

    from dolly_desktop.generation.tuning.child import (
        STALE_WORK_S,
        WORK_PREFIX,
        CalibrationJob,
        Request,
    )
    from dolly_desktop.generation.tuning.measure import Cancelled

    monkeypatch.setenv("DOLLY_DESKTOP_HOME", str(tmp_path / "home"))
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    stale, recent = temp / f"{WORK_PREFIX}old", temp / f"{WORK_PREFIX}other-app"
    for d in (stale, recent):
        (d / "0-layers").mkdir(parents=True)
    os.utime(stale, (time.time() - STALE_WORK_S - 60,) * 2)
    job = CalibrationJob(Request(str(tiny_models["INT4"]), cut=(0, 1), max_rounds=3))
    job.start()
    deadline = time.monotonic() + 120
    mine: list[Path] = []
    while time.monotonic() < deadline and not any((d / "1-layers").exists() for d in mine):
        mine = [d for d in temp.iterdir() if d not in (stale, recent)]
        time.sleep(0.05)
    assert mine and any((d / "1-layers").exists() for d in mine)  # the copies were written
    job.cancel()
    with pytest.raises(Cancelled):
        job.wait()
    assert sorted(temp.iterdir()) == [recent]  # its own and the stale one gone


def test_the_calibration_measures_on_the_cuts_and_stores_whole_model_figures(
    tiny_models, tmp_path, monkeypatch
):
    import tempfile

    from dolly_desktop.generation.tuning.child import Request, calibrate_here

    monkeypatch.setenv("DOLLY_DESKTOP_HOME", str(tmp_path / "home"))
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    parts: list[str] = []
    req = Request(str(tiny_models["INT4"]), cut=(0, 1), max_rounds=1, budget_s=0.0)
    got = calibrate_here(req, on_figures=lambda n, f: parts.append(n))
    assert set(parts) == {part_name(n, k) for n in got.figures for k in (0, 1)}
    assert all("cut to 0 and 1 of its 2 layers" in f.cut for f in got.figures.values())
    again = cal.stored(tiny_models["INT4"])  # the cache reads back what was stored
    assert again is not None and again.figures == got.figures
    assert "cut to 0 and 1 of its 2 layers" in cal.describe(again)
    assert list(temp.iterdir()) == []  # the copies lived in a temporary folder, now gone


# -- the extrapolation, pure --------------------------------------------------------------------


def figs(decode: float, long: float, short: float = 0.01) -> Figures:
    return Figures(decode, decode * 2, 40, short, short * 2, 500, long, long * 2, threads=2)


def test_the_whole_model_is_the_fixed_part_plus_every_layer():
    # 3b-like: lm_head and embedding 17 ms a token, 7 ms a layer; 500 tokens: 0.03 s + 0.15 s
    # a layer.
    at0, at2 = figs(0.017, 0.03), figs(0.017 + 2 * 0.007, 0.03 + 2 * 0.15)
    f = extrapolate({0: at0, 2: at2}, 32, "note")
    assert f.decode_s == pytest.approx(0.017 + 32 * 0.007)
    assert f.decode_cpu_s == pytest.approx(2 * (0.017 + 32 * 0.007))
    assert f.long_s == pytest.approx(0.03 + 32 * 0.15)
    assert (f.short_tokens, f.long_tokens, f.threads, f.cut) == (40, 500, 2, "note")
    # Three cuts: the least-squares line through them.
    at1 = figs(0.017 + 0.007 + 0.001, 0.03 + 0.15)  # one noisy point
    f3 = extrapolate({0: at0, 1: at1, 2: at2}, 32)
    assert f3.decode_s == pytest.approx(0.017 + 1 / 3 * 0.001 + 32 * 0.007, rel=1e-9)
    # Noise that makes the bigger cut faster: not below the bigger cut's own time.
    assert extrapolate({0: figs(0.02, 0.03), 2: figs(0.019, 0.3)}, 32).decode_s == 0.019
    with pytest.raises(ValueError):
        extrapolate({2: at2}, 32)


def test_extrapolation_keeps_the_fewest_turns():
    a = Figures(0.1, 0.2, 40, 0.1, 0.2, 500, 1.0, 2.0, turns=3)
    b = Figures(0.2, 0.4, 40, 0.2, 0.4, 500, 2.0, 4.0, turns=2)
    assert extrapolate({0: a, 4: b}, 8).turns == 2


# -- the loop with cuts, on a fake clock ---------------------------------------------------------

# Two candidates as on a model of 32 layers: "lean" has the cheaper fixed part (lm_head) but
# the dearer layers; on a 2-layer cut it looks faster, on the whole model it is slower.
LAYERS = 32
COSTS = {  # per token decode: fixed, per layer; 500-token prefill: fixed, per layer
    "dq 128": dict(decode=(0.030, 0.0060), long=(0.05, 0.15)),
    "dq 32": dict(decode=(0.010, 0.0070), long=(0.03, 0.16)),
}


class CutRunner:
    short_tokens = 40
    long_tokens = 500
    threads = 2

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.loads: list[tuple[str, int | None]] = []
        self.live: set[str] = set()
        self.measured_beside: dict[str, set[str]] = {}  # a part -> the parts loaded with it

    def _t(self, c: Candidate) -> tuple[float, float]:
        base = c.name.split(" @")[0].split(",")[0]
        costs, k = COSTS[base], LAYERS if c.layers is None else c.layers
        per_layer = costs["decode"][1] * (0.9 if KV in c.props else 1.0)  # a u8 cache: faster
        return costs["decode"][0] + k * per_layer, costs["long"][0] + k * costs["long"][1]

    def load(self, c: Candidate) -> Candidate:
        self.loads.append((c.name, c.layers))
        self.live.add(c.name)
        self.clock.spend(0.1)
        return c

    def decode(self, c: Candidate, tokens: int, mark) -> None:
        self.measured_beside.setdefault(c.name, set()).update(self.live)
        self.clock.spend(0.01)
        mark()
        for _ in range(tokens - 1):
            self.clock.spend(self._t(c)[0])
            mark()

    def prefill(self, c: Candidate, mark) -> None:
        self.clock.spend(self._t(c)[1])
        mark()

    def free(self, c: Candidate) -> None:
        self.live.discard(c.name)


ONE_TURN = Plan(rounds=1, max_rounds=1)


def run_cut(cuts: CutPlan | None, plan: Plan = ONE_TURN):
    clock = FakeClock()
    runner = CutRunner(clock)
    stage1 = [Candidate(n, {DQ: int(n.split()[1])}) for n in COSTS]
    kv = lambda c: Candidate(f"{c.name}, KV u8", {**c.props, KV: "u8"})  # noqa: E731
    seen: dict[str, Figures] = {}
    figures = calibrate(
        runner, stage1, kv, "dq 128", DEFAULT_MIX, plan, clock=clock,
        on_figures=seen.__setitem__, cuts=cuts,
    )  # fmt: skip
    return figures, runner, seen


def test_candidates_are_measured_on_the_cuts_and_chosen_on_the_whole_models_scale():
    figures, runner, seen = run_cut(CutPlan(LAYERS, (0, 2)))
    assert {k for _, k in runner.loads} == {0, 2}  # never the whole model
    assert set(seen) == {part_name(n, k) for n in figures for k in (0, 2)}
    for name in COSTS:
        fixed, per = COSTS[name]["decode"]
        assert figures[name].decode_s == pytest.approx(fixed + LAYERS * per)
        assert figures[name].long_s == pytest.approx(sum(COSTS[name]["long"][i] * (1, LAYERS)[i]
                                                         for i in range(2)))  # fmt: skip
        assert "cut to 0 and 2 of its 32 layers" in figures[name].cut
    # On the cut, dq 32 decodes faster (0.024 against 0.042 s); on the whole model slower.
    assert seen[part_name("dq 32", 2)].decode_s < seen[part_name("dq 128", 2)].decode_s
    assert choose(figures, DEFAULT_MIX, "dq 32").startswith("dq 128")
    # Stage 2 measured the u8 cache beside the winner, on its cuts, put on stage 1's scale.
    u8 = figures["dq 128, KV u8"]
    assert u8.decode_s == pytest.approx(0.030 + LAYERS * 0.0060 * 0.9)
    # Its cut of no layers has no KV cache: the winner's figures, not loaded nor measured.
    assert ("dq 128, KV u8 @2 layers", 2) in runner.loads
    assert ("dq 128, KV u8 @0 layers", 0) not in runner.loads
    assert seen[part_name("dq 128, KV u8", 0)] == seen[part_name("dq 128", 0)]
    # Loaded two at a time: the same figures.
    again, _, _ = run_cut(CutPlan(LAYERS, (0, 2)), Plan(rounds=1, max_rounds=1, load_threads=2))
    assert again == figures
    # The same choice as the whole model measured (no cuts).
    whole, runner, _ = run_cut(None)
    assert {k for _, k in runner.loads} == {None}
    assert choose(whole, DEFAULT_MIX) == choose(figures, DEFAULT_MIX)
    for name in whole:
        assert figures[name].decode_s == pytest.approx(whole[name].decode_s)


def test_a_candidates_cuts_are_measured_side_by_side_when_memory_is_tight():
    """Three copies fit: the groups hold whole candidates (their two cuts in turns), not a
    candidate's 0-layer cut in one group and its 2-layer cut in the next."""
    _, runner, _ = run_cut(CutPlan(LAYERS, (0, 2)), Plan(rounds=1, max_rounds=1, at_once=3))
    for name in COSTS:
        at0, at2 = part_name(name, 0), part_name(name, 2)
        assert at2 in runner.measured_beside[at0] and at0 in runner.measured_beside[at2]


def test_an_old_cache_entry_without_the_cut_field_still_reads(tmp_path):
    path = tmp_path / "calibration.json"
    c = a_calibration()
    cal.store(c, path)
    data = json.loads(path.read_text())
    for entry in data["entries"].values():
        for f in entry["figures"].values():
            f.pop("cut")  # as the version before cuts wrote it
    path.write_text(json.dumps(data))
    back = cal.load(c.key, path)
    assert back is not None and back.figures["dq 128"].cut == ""
    assert "cut to" not in cal.describe(back)
