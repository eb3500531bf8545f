"""The CPU properties chosen from the CPU's capabilities and how the model's weights are
compressed, for both machine kinds measured on (docs/benchmarks.md, "Long prompts: what bounds
a prefill")."""

from __future__ import annotations

import pytest

from dolly_desktop.generation.tuning import rule as cpu_tuning
from dolly_desktop.generation.tuning.rule import (
    AMX,
    KERNEL_CACHE,
    WeightFormat,
    cpu_capabilities,
    cpu_properties,
    weight_format,
)

# OpenVINO 2026.4's OPTIMIZATION_CAPABILITIES for the CPU on the two machines of
# docs/benchmarks.md: AMD EPYC Zen 4 (AVX-512 BF16 and VNNI, no AMX) and Intel Sapphire
# Rapids (AVX-512 FP16 as well, and AMX, which cpu_capabilities() adds).
ZEN4 = ["BF16", "WINOGRAD", "FP32", "INT8", "BIN", "EXPORT_IMPORT"]
SAPPHIRE_RAPIDS = ["BF16", "WINOGRAD", "FP32", "FP16", "INT8", "BIN", "EXPORT_IMPORT", AMX]
AVX2_ONLY = ["FP32", "INT8", "BIN", "EXPORT_IMPORT"]
DQ = "DYNAMIC_QUANTIZATION_GROUP_SIZE"
INT8 = WeightFormat(8, None)  # NNCF's INT8: per output channel


def int4(group: int | None) -> WeightFormat:
    return WeightFormat(4, group)


WEIGHTS = [None, int4(32), int4(128), int4(None), INT8, WeightFormat(8, 128)]


@pytest.mark.parametrize("caps", [ZEN4, SAPPHIRE_RAPIDS, AVX2_ONLY, []])
@pytest.mark.parametrize("weights", WEIGHTS)
def test_every_cpu_keeps_the_sdpa_pipeline_and_the_bounded_kernel_cache(caps, weights):
    props = cpu_properties(caps, weights)
    assert props["ATTENTION_BACKEND"] == "SDPA"
    assert props["CPU_RUNTIME_CACHE_CAPACITY"] == KERNEL_CACHE == 32
    # Nothing else is chosen for OpenVINO: precision and KV cache stay its own.
    assert set(props) <= {"ATTENTION_BACKEND", "CPU_RUNTIME_CACHE_CAPACITY", DQ}


def test_zen4_quantizes_activations_in_groups_of_128_for_int4_group_128_weights():
    assert cpu_properties(ZEN4, int4(128))[DQ] == 128
    assert cpu_properties(ZEN4, int4(256))[DQ] == 128  # whole 128-groups per weight group


def test_zen4_quantizes_activations_in_groups_of_512_for_per_channel_int8_weights():
    assert cpu_properties(ZEN4, INT8)[DQ] == 512
    for hidden in (2560, 4096, 5120):  # dolly-v2-3b, -7b, -12b
        assert hidden % 512 == 0 and 4 * hidden % 512 == 0


@pytest.mark.parametrize("weights", [None, int4(32), int4(64), int4(None), WeightFormat(8, 128)])
def test_zen4_keeps_openvinos_group_for_weights_not_measured(weights):
    # A dynamic-quantization group wider than the weights' group runs another, slower kernel
    # (256 over group-128 weights: 1.4x the prefill CPU time); FP16, INT4 per channel and
    # grouped INT8 were not measured.
    assert DQ not in cpu_properties(ZEN4, weights)


@pytest.mark.parametrize("weights", WEIGHTS)
def test_amx_and_cpus_without_bf16_keep_openvinos_defaults(weights):
    # On AMX every group measured within 3 % of OpenVINO's (docs/calibration.md); without
    # AVX-512 BF16, not measured: OpenVINO decides.
    assert DQ not in cpu_properties(SAPPHIRE_RAPIDS, weights)
    assert DQ not in cpu_properties(AVX2_ONLY, weights)


def test_the_choice_depends_only_on_the_capabilities_not_their_order_or_case():
    assert cpu_properties(ZEN4, int4(128)) == cpu_properties(reversed(ZEN4), int4(128))
    lower = [c.lower() for c in SAPPHIRE_RAPIDS]
    assert cpu_properties(lower, int4(128)) == cpu_properties(SAPPHIRE_RAPIDS, int4(128))


def _ir(tmp_path, mode: str, group: int):
    record = (
        f'<backup_mode value="int8_asym" /><group_size value="{group}" />'
        f'<mode value="{mode}" /><ratio value="1.0" />'
    )
    body = "<layers/>" * 20000  # the record is at the end of a long file
    (tmp_path / "openvino_model.xml").write_text(
        f"<net>{body}<rt_info><nncf><weight_compression>{record}"
        "</weight_compression></nncf></rt_info></net>"
    )
    return tmp_path


def test_the_weight_format_is_read_from_nncfs_record_in_the_ir(tmp_path):
    assert weight_format(_ir(tmp_path, "int4_asym", 128)) == int4(128)
    assert weight_format(_ir(tmp_path, "int4_sym", 64)) == int4(64)
    assert weight_format(_ir(tmp_path, "int8_asym", -1)) == INT8  # per channel
    assert weight_format(_ir(tmp_path, "nf4", 64)) is None  # a mode not measured
    (tmp_path / "openvino_model.xml").write_text("<net><rt_info/></net>")  # FP16, no record
    assert weight_format(tmp_path) is None
    assert weight_format(tmp_path / "missing") is None


def test_the_capabilities_come_from_openvino_and_are_read_once(monkeypatch):
    cpu_capabilities.cache_clear()
    caps = cpu_capabilities()
    assert "FP32" in caps  # every CPU OpenVINO runs on
    monkeypatch.setattr(cpu_tuning, "_amx_in_cpu_flags", lambda: pytest.fail("read again"))
    assert cpu_capabilities() == caps
    cpu_capabilities.cache_clear()


def test_amx_is_read_from_the_cpu_flags(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    monkeypatch.setattr(cpu_tuning, "CPUINFO", info)
    for flags, has in (
        ("fpu avx512f avx512_bf16", False),
        ("fpu amx_bf16 amx_tile amx_int8", True),
    ):
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        assert cpu_tuning._amx_in_cpu_flags() is has
    info.unlink()
    assert cpu_tuning._amx_in_cpu_flags() is False


@pytest.mark.parametrize(("precision", "weights"), [("INT4", int4(128)), ("INT8", INT8)])
def test_the_engine_loads_with_the_properties_chosen_for_this_cpu_and_model(
    tiny_models, precision, weights
):
    from dolly_desktop.generation.engines.local import Engine
    from dolly_desktop.generation.params import GenerationParams

    model = tiny_models[precision]
    assert weight_format(model) == weights  # NNCF's record, read from the IR
    chosen = cpu_properties(cpu_capabilities(), weights)
    engine = Engine(model)
    try:
        assert {k: engine._props.get(k) for k in chosen} == chosen
        r = engine.generate("Who is Dolly?", GenerationParams(greedy=True, max_new_tokens=8))
        assert r.generated_tokens == 8  # these settings run on this CPU
    finally:
        engine.close()
