"""The CPU properties chosen from the CPU's capabilities and the model's INT4 grouping, for
both machine kinds measured on (docs/benchmarks.md, "Long prompts: what bounds a prefill")."""

from __future__ import annotations

import pytest

from dolly_desktop.generation import cpu_tuning
from dolly_desktop.generation.cpu_tuning import (
    AMX,
    KERNEL_CACHE,
    cpu_capabilities,
    cpu_properties,
    int4_group_size,
)

# OpenVINO 2026.4's OPTIMIZATION_CAPABILITIES for the CPU on the two machines of
# docs/benchmarks.md: AMD EPYC Zen 4 (AVX-512 BF16 and VNNI, no AMX) and Intel Sapphire
# Rapids (AVX-512 FP16 as well, and AMX, which cpu_capabilities() adds).
ZEN4 = ["BF16", "WINOGRAD", "FP32", "INT8", "BIN", "EXPORT_IMPORT"]
SAPPHIRE_RAPIDS = ["BF16", "WINOGRAD", "FP32", "FP16", "INT8", "BIN", "EXPORT_IMPORT", AMX]
AVX2_ONLY = ["FP32", "INT8", "BIN", "EXPORT_IMPORT"]
DQ = "DYNAMIC_QUANTIZATION_GROUP_SIZE"


@pytest.mark.parametrize("caps", [ZEN4, SAPPHIRE_RAPIDS, AVX2_ONLY, []])
@pytest.mark.parametrize("group", [None, 32, 128])
def test_every_cpu_keeps_the_sdpa_pipeline_and_the_bounded_kernel_cache(caps, group):
    props = cpu_properties(caps, group)
    assert props["ATTENTION_BACKEND"] == "SDPA"
    assert props["CPU_RUNTIME_CACHE_CAPACITY"] == KERNEL_CACHE == 32
    # Nothing else is chosen for OpenVINO: precision and KV cache stay its own.
    assert set(props) <= {"ATTENTION_BACKEND", "CPU_RUNTIME_CACHE_CAPACITY", DQ}


def test_zen4_quantizes_activations_in_groups_of_128_for_int4_group_128_weights():
    assert cpu_properties(ZEN4, 128)[DQ] == 128
    assert cpu_properties(ZEN4, 256)[DQ] == 128  # a whole number of 128-groups per weight group


@pytest.mark.parametrize("group", [None, 32, 64])
def test_zen4_keeps_openvinos_group_where_the_weights_are_not_in_128_groups(group):
    # A dynamic-quantization group wider than the weights' group runs another, slower kernel
    # (256 over group-128 weights: 1.4x the prefill CPU time); INT8 and FP16 were not measured.
    assert DQ not in cpu_properties(ZEN4, group)


@pytest.mark.parametrize("group", [None, 64, 128])
def test_amx_and_cpus_without_bf16_keep_openvinos_defaults(group):
    # Not measured on an AMX machine, nor on one without AVX-512 BF16: OpenVINO decides.
    assert DQ not in cpu_properties(SAPPHIRE_RAPIDS, group)
    assert DQ not in cpu_properties(AVX2_ONLY, group)


def test_the_choice_depends_only_on_the_capabilities_not_their_order_or_case():
    assert cpu_properties(ZEN4, 128) == cpu_properties(reversed(ZEN4), 128)
    lower = [c.lower() for c in SAPPHIRE_RAPIDS]
    assert cpu_properties(lower, 128) == cpu_properties(SAPPHIRE_RAPIDS, 128)


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


def test_the_int4_group_is_read_from_nncfs_record_in_the_ir(tmp_path):
    assert int4_group_size(_ir(tmp_path, "int4_asym", 128)) == 128
    assert int4_group_size(_ir(tmp_path, "int4_sym", 64)) == 64
    assert int4_group_size(_ir(tmp_path, "int8_asym", -1)) is None  # INT8: per channel
    (tmp_path / "openvino_model.xml").write_text("<net><rt_info/></net>")  # FP16, no record
    assert int4_group_size(tmp_path) is None
    assert int4_group_size(tmp_path / "missing") is None


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


def test_the_engine_loads_with_the_properties_chosen_for_this_cpu_and_model(tiny_models):
    from dolly_desktop.generation.local import Engine

    model = tiny_models["INT4"]
    assert cpu_tuning.int4_group_size(model) == 128  # NNCF's record, read from the IR
    chosen = cpu_tuning.cpu_properties(cpu_capabilities(), 128)
    engine = Engine(model, warm_up=False)
    try:
        assert {k: engine._props.get(k) for k in chosen} == chosen
    finally:
        engine.close()
