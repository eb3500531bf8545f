"""The family rule: the CPU plugin's properties for the app's engines, chosen at load from what
the CPU offers and, for dynamic quantization, from how the model's weights are compressed. It
holds until this machine's calibration (calibration.py) has measured better, and is what a
calibration that is off, stopped or failed leaves in place.

`cpu_properties(capabilities, weights)` is a pure function of OpenVINO's
OPTIMIZATION_CAPABILITIES for the CPU (plus "AMX", which OpenVINO does not list:
`cpu_capabilities()` adds it from the CPU's flags), so both machine kinds are tested anywhere.
The measurements behind each choice are in docs/benchmarks.md, "Long prompts: what bounds a
prefill" (bench/prefill.py) and "CPU settings: what makes decode faster"
(bench/cpu_settings.py).
"""

from __future__ import annotations

import functools
import logging
import platform
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

log = logging.getLogger(__name__)

# Bounds the CPU plugin's per-shape kernel caches: at OpenVINO's defaults (5000 executors,
# 1024 oneDNN primitives) every new prompt length kept about 1.4 MB for good on the tiny
# model (docs/benchmarks.md, "Memory across prompt lengths"); bounded, growth stops within the
# first 100 lengths. The layers are alike, so one inference needs few distinct kernels: 16
# measured slower decode on a 32-layer model, 32 did not. Same answers.
KERNEL_CACHE = 32

AMX = "AMX"  # not one of OpenVINO's capability names: cpu_capabilities() adds it
CPUINFO = Path("/proc/cpuinfo")

# Dynamic quantization: the activations quantized to int8 in groups along the input, so that a
# product with INT4/INT8 weights runs on the int8 dot-product instructions. OpenVINO's group is
# 32; wider groups spend less on scales. Measured on Zen 4 (AVX-512 BF16 and VNNI, no AMX), 3b
# shape, quiet machine, bench/prefill.py (docs/benchmarks.md, "Long prompts"):
# - INT4 weights in groups of 128: group 128 gave TTFT 4.29 / 8.75 s for 510 / 1000-token
#   prompts against the notebook's 5.88 / 11.95 (0.73x both; 0.93x with group 32), decode 0.97x
#   the group-32 speed in separate processes and 1.05x paired in turns. A group wider than the
#   weights' is another, slower path (256 over group-128 weights: 1.4x the prefill and 1.6x the
#   decode CPU time), so the group follows the weights'.
# - INT8 weights per output channel (a group is any part of a row): group 512 gave 3.64 / 7.71 s
#   against the notebook's 5.54 / 12.00 (0.66x / 0.64x), group 128 0.74x / 0.71x, 2560 (a
#   whole row of most weights) 0.75x / 0.71x, OpenVINO's 32 1.05x / 0.96x; decode 1.14x the
#   notebook's. 512 divides every Dolly's hidden sizes (2560, 4096, 5120 and four times those).
#   Top-1 agreement with FP16 on random 3b weights 91.7 % against 93.8 % with group 32 (2 of 96
#   tokens); real weights' outlier channels, which weigh more in wider groups, not measured.
DQ_GROUP_INT4 = 128
DQ_GROUP_INT8 = 512


class WeightFormat(NamedTuple):
    """How a model's weights are compressed (NNCF's record in the IR)."""

    bits: int  # 4 or 8
    group: int | None  # quantization group along the input; None: per output channel


def cpu_properties(
    capabilities: Iterable[str], weights: WeightFormat | None = None
) -> dict[str, Any]:
    """The app's CPU properties for a CPU with these capabilities (OpenVINO's
    OPTIMIZATION_CAPABILITIES, e.g. ["BF16", "WINOGRAD", "FP32", "INT8", "BIN",
    "EXPORT_IMPORT"], plus "AMX" where the CPU has Intel AMX), for a model whose weights are
    compressed as `weights` says (None: not compressed, or not known)."""
    caps = {c.upper() for c in capabilities}
    props: dict[str, Any] = {
        # The stateful SDPA pipeline loads in 1.0 s against 3.5-4.3 s for genai's default
        # paged-attention one (which pays off only when batching requests; the batching
        # engine drops this key) and decodes as fast or faster (bench/cpu_settings.py).
        "ATTENTION_BACKEND": "SDPA",
        "CPU_RUNTIME_CACHE_CAPACITY": KERNEL_CACHE,
    }
    if AMX in caps:
        # OpenVINO's defaults stand (bf16 inference, whose large matrix products a prefill runs
        # on AMX tiles; dynamic quantization in groups of 32). Measured on a Sapphire Rapids
        # with AMX, 3b shape, quiet: no group (off, 32, 128, 512) nor a u8 KV cache moved INT4
        # or INT8 decode or a 500-token prefill by more than 3 % (dq 512 against 32 on INT8,
        # paired on the whole model: 0.98x decode, 1.01x TTFT); docs/calibration.md.
        return props
    if "BF16" in caps and weights is not None:
        # AVX-512 BF16 or AVX-VNNI-2 without AMX (Zen 4, Cooper Lake): these CPUs have the
        # int8 dot products (VNNI) that dynamic quantization runs on. bf16 inference stays
        # (OpenVINO's default there): f32 took 1.1x / 1.2x the CPU time of a 510 / 1000-token
        # INT4 prefill. OpenVINO's KV cache precision stays too (u8 against the export's f16:
        # the same prefill time, 0.91x / 0.92x the notebook's).
        group = _dq_group(weights)
        if group is not None:
            props["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = group
    return props


def _dq_group(weights: WeightFormat) -> int | None:
    """The measured dynamic-quantization group for these weights (None: OpenVINO's own)."""
    if weights.bits == 4 and weights.group is not None and weights.group % DQ_GROUP_INT4 == 0:
        return DQ_GROUP_INT4  # a whole number of groups per weight group
    if weights.bits == 8 and weights.group is None:
        return DQ_GROUP_INT8
    return None  # INT4 per channel or in narrower groups, grouped INT8: not measured


_GROUP = re.compile(
    r"<weight_compression>.*?<group_size value=\"(-?\d+)\".*?<mode value=\"(\w+)\"", re.S
)


def weight_format(model_dir: Path) -> WeightFormat | None:
    """How an IR folder's weights are compressed, from the record NNCF leaves at the end of
    openvino_model.xml (None: no record, as for FP16, or another mode)."""
    m = _GROUP.search(_rt_info(model_dir))
    if m is None:
        return None
    group, mode = int(m.group(1)), m.group(2)
    bits = 4 if mode.startswith("int4") else 8 if mode.startswith("int8") else None
    if bits is None:
        return None
    return WeightFormat(bits, group if group > 0 else None)  # NNCF: -1 = per channel


def runtime_option(model_dir: Path, name: str) -> str | None:
    """A runtime option the exporter left in the IR (optimum-intel writes KV_CACHE_PRECISION
    f16, which OpenVINO applies unless a property overrides it)."""
    m = re.search(
        rf"<runtime_options>.*?<{re.escape(name)} value=\"([^\"]*)\"", _rt_info(model_dir), re.S
    )
    return m.group(1) if m else None


def _rt_info(model_dir: Path) -> str:
    """The end of openvino_model.xml, where rt_info closes the file ("" if unreadable)."""
    xml = Path(model_dir) / "openvino_model.xml"
    try:
        with xml.open("rb") as f:
            f.seek(max(0, xml.stat().st_size - 65536))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _amx_in_cpu_flags() -> bool:
    """Whether the CPU has AMX (amx_bf16 / amx_int8 in /proc/cpuinfo; Linux)."""
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool({"amx_bf16", "amx_int8"} & set(line.split(":", 1)[1].split()))
    return False


@functools.cache
def cpu_capabilities() -> tuple[str, ...]:
    """OpenVINO's OPTIMIZATION_CAPABILITIES for the CPU, plus "AMX" when the CPU has it.

    OpenVINO names BF16 (AVX-512 BF16 or AVX-VNNI-2), FP16 (AVX-512 FP16) and INT8, but not
    AMX: it is read from the CPU flags on Linux; elsewhere FP16 on x86-64 stands for it
    (AVX-512 FP16 ships in the Xeons that have AMX, Sapphire Rapids and later). 14 ms."""
    import openvino as ov

    try:
        caps = [str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
    except RuntimeError as e:  # no CPU plugin: OpenVINO's own defaults will do
        log.warning("could not read the CPU's capabilities: %s", e)
        return ()
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    if x86 and (_amx_in_cpu_flags() if CPUINFO.exists() else "FP16" in caps):
        caps.append(AMX)
    return tuple(caps)
