"""A copy of a model cut to its first few layers, for calibration (issue 27).

Every candidate is a compiled model with its own repacked weights, and measuring five of them
on the whole 3b model took ~110 s of a quiet 2-core machine: five repacks and six 500-token
prefills. The candidates differ in how each of the model's identical layers runs, so they are
measured on copies cut to a few layers, and the figures extrapolated to all of them
(`extrapolate`): T(L) = fixed + L x per_layer, from two cuts.

The surgery, on an optimum-exported stateful GPT-NeoX IR: the residual stream entering layer
K is the input of that layer's layer-norm MVN (GPT-NeoX's parallel residual normalises it
once for both branches, so one MVN per layer, named input_layernorm or
post_attention_layernorm); the final layer norm is fed from it instead, and the KV-cache
states (ReadValue/Assign pairs, `past_key_values.{i}.key...`) of layers K and on are dropped.
Embedding and lm_head stay whole. Another shape of graph (another architecture, a renamed
export) gives None: the caller measures the whole model.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from dolly_desktop.generation.tuning.calibration import Candidate, Figures

log = logging.getLogger(__name__)

MODEL_XML = "openvino_model.xml"
MODEL_BIN = "openvino_model.bin"
_LAYER_NORM = re.compile(r"\.layers\.(\d+)\.(?:input_layernorm|post_attention_layernorm)/")
_FINAL_NORM = re.compile(r"\.final_layer_norm/")
_STATE = re.compile(r"^past_key_values\.(\d+)\.")


class NotCuttable(Exception):
    """The graph is not the shape this module knows."""


@dataclass(frozen=True)
class Layers:
    """Where a model can be cut: the residual stream entering each layer, the final norm,
    and the states by layer."""

    entering: list[Any]  # Output feeding layer i's norm, by i
    final: Any  # the final layer norm's MVN
    states: dict[int, list[Any]]  # sinks (Assign) by layer

    @property
    def count(self) -> int:
        return len(self.entering)


def find_layers(model: Any) -> Layers:
    """The cut points of an optimum-exported GPT-NeoX IR; NotCuttable when it is not one."""
    norms: dict[int, list[Any]] = defaultdict(list)
    finals = []
    for op in model.get_ops():
        if op.get_type_name() != "MVN":
            continue
        name = op.get_friendly_name()
        if m := _LAYER_NORM.search(name):
            norms[int(m.group(1))].append(op)
        elif _FINAL_NORM.search(name):
            finals.append(op)
    if not norms or len(finals) != 1:
        raise NotCuttable(f"{len(norms)} layer norms, {len(finals)} final norms")
    count = max(norms) + 1
    if sorted(norms) != list(range(count)):
        raise NotCuttable(f"layer norms of layers {sorted(norms)}")
    entering = []
    for i in range(count):
        inputs = [o.input_value(0) for o in norms[i]]
        sources = {(x.get_node().get_name(), x.get_index()) for x in inputs}
        if len(sources) != 1:
            raise NotCuttable(f"layer {i}'s norms read {len(sources)} different inputs")
        entering.append(norms[i][0].input_value(0))
    states: dict[int, list[Any]] = defaultdict(list)
    for sink in model.get_sinks():
        get_id = getattr(sink, "get_variable_id", None)
        m = _STATE.match(get_id()) if get_id else None
        if m is None or int(m.group(1)) >= count:
            raise NotCuttable(f"a state not named for a layer: {get_id() if get_id else sink}")
        states[int(m.group(1))].append(sink)
    if sorted(states) != list(range(count)):
        raise NotCuttable(f"states of layers {sorted(states)} for {count} layers")
    return Layers(entering, finals[0], dict(states))


def layer_count(model_dir: Path) -> int | None:
    """How many layers a cut can keep at most (None: the model cannot be cut)."""
    import openvino as ov

    try:
        return find_layers(ov.Core().read_model(Path(model_dir) / MODEL_XML)).count
    except NotCuttable:
        return None


def cut(src: Path, dst: Path, keep: int) -> Path | None:
    """Write into `dst` a copy of the model in `src` with its first `keep` layers (0: the
    embedding straight into the final norm and lm_head; all of them: the same model), its
    tokenizer and configuration beside it. None, with nothing written, when the graph is not
    one this module knows."""
    layers = _cut(Path(src), Path(dst), keep, whole=True)
    return None if layers is None else Path(dst)


def copies(src: Path, root: Path, parts: Sequence[int]) -> tuple[dict[int, Path], int] | None:
    """The model cut to each of `parts` layers, in folders under `root`, and its number of
    layers; None when the graph is not one this module knows or a cut would keep every layer
    (it would cost what the whole model does)."""
    folders: dict[int, Path] = {}
    layers = 0
    for keep in sorted(set(parts), reverse=True):  # the biggest first: it tells the count
        dst = Path(root) / f"{keep}-layers"
        got = _cut(Path(src), dst, keep, whole=False)
        if got is None or keep >= got:
            for f in folders.values():
                shutil.rmtree(f, ignore_errors=True)
            return None
        folders[keep], layers = dst, got
    return dict(sorted(folders.items())), layers


def _cut(src: Path, dst: Path, keep: int, whole: bool) -> int | None:
    """Cut and write (see `cut`); the model's number of layers, or None. Keeping every
    layer writes a copy only if `whole`."""
    import openvino as ov

    model = ov.Core().read_model(src / MODEL_XML)  # weights mapped, not read
    try:
        try:
            layers = find_layers(model)
        except NotCuttable as e:
            log.info("%s cannot be cut to layers: %s", src, e)
            return None
        count = layers.count
        if keep >= count and not whole:  # a cut no smaller than the model: `copies` declines
            return count
        if not 0 <= keep <= count:
            raise ValueError(f"cannot keep {keep} of {count} layers")
        if keep < count:
            layers.final.input(0).replace_source_output(layers.entering[keep])
        for i in range(keep, count):
            for sink in layers.states[i]:
                model.remove_sink(sink)
        dropped = tuple(f"past_key_values.{i}." for i in range(keep, count))
        for var in list(model.get_variables()):
            if var.get_info().variable_id.startswith(dropped):
                model.remove_variable(var)
        del layers  # its outputs hold the graph's nodes
        model.validate_nodes_and_infer_types()
        dst.mkdir(parents=True, exist_ok=True)
        # rt_info (the export's runtime options, NNCF's record) stays: this is the same model.
        ov.save_model(model, dst / MODEL_XML, compress_to_fp16=False)
    finally:
        del model  # the mapped weights go with the last reference
    for f in src.iterdir():
        if f.is_file() and f.name not in (MODEL_XML, MODEL_BIN):
            shutil.copy2(f, dst / f.name)
    return count


def states(model_dir: Path) -> Sequence[str]:
    """The variable ids of a model's states (tests: a cut keeps its layers' only)."""
    import openvino as ov

    model = ov.Core().read_model(Path(model_dir) / MODEL_XML)
    return sorted(v.get_info().variable_id for v in model.get_variables())


# -- from the cuts' figures to the whole model's ---------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Which cuts measure a candidate, for a model of `layers` layers."""

    layers: int
    parts: tuple[int, ...]  # layers kept in each cut (at least two different counts)

    def part(self, candidate: Candidate, keep: int) -> Candidate:
        return Candidate(part_name(candidate.name, keep), candidate.props, layers=keep)

    def note(self) -> str:
        kept = " and ".join(str(k) for k in self.parts)
        return f"measured on copies cut to {kept} of its {self.layers} layers, extrapolated"


def part_name(name: str, keep: int) -> str:
    return f"{name} @{keep} layers"


def extrapolate(measured: Mapping[int, Figures], layers: int, note: str = "") -> Figures:
    """The whole model's figures from cuts' (by layers kept): each time is a straight line
    in the layers, T(L) = fixed + L x per_layer (embedding, lm_head and the per-call overheads
    are the fixed part), fitted by least squares and read at `layers`. Never below the largest
    cut's time: a cut's noise must not make a layer cost less than nothing."""
    if len(measured) < 2:
        raise ValueError(f"two cuts at least, not {sorted(measured)}")
    ks = sorted(measured)
    mean_k = sum(ks) / len(ks)
    var_k = sum((k - mean_k) ** 2 for k in ks)
    biggest = measured[ks[-1]]
    out: dict[str, Any] = {}
    for f in fields(Figures):
        v = getattr(biggest, f.name)
        if f.name.endswith("_s"):
            ys = [getattr(measured[k], f.name) for k in ks]
            mean_y = sum(ys) / len(ys)
            slope = sum((k - mean_k) * (y - mean_y) for k, y in zip(ks, ys, strict=True)) / var_k
            v = max(v, mean_y + slope * (layers - mean_k))
        elif f.name == "turns":
            v = min(m.turns for m in measured.values())
        out[f.name] = v
    out["cut"] = note
    return Figures(**out)
