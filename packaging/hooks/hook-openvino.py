"""PyInstaller hook for openvino, which ships none.

OpenVINO finds its plugins and frontends at run time by scanning the folder that holds
libopenvino.so (openvino/libs), so the libraries must land there, not beside the executable.
A naive build has only what _pyopenvino links against: no CPU plugin, no IR frontend
("Available frontends: jax pytorch tf" comes from the Python-side frontend packages).

Kept: the IR frontend, every device plugin (CPU, GPU, NPU, AUTO, HETERO, BATCH: the app
lets the person pick a device), TBB and hwloc. Left out: the frontends that convert other
formats (PyTorch, TensorFlow, ONNX, Paddle, JAX, GGUF); the app only ever reads IR.
"""

from pathlib import Path

from PyInstaller.utils.hooks import collect_data_files, collect_dynamic_libs, copy_metadata

UNUSED_FRONTENDS = ("pytorch", "tensorflow", "tensorflow_lite", "onnx", "paddle", "jax", "gguf")


def _wanted(src: str) -> bool:
    name = Path(src).name
    return not any(f"openvino_{fe}_frontend" in name for fe in UNUSED_FRONTENDS)


# PyInstaller's default patterns miss versioned names such as libopenvino.so.2641.
binaries = [
    (src, dest)
    for src, dest in collect_dynamic_libs("openvino", search_patterns=["lib*.so", "lib*.so.*"])
    if _wanted(src)
]
# cache.json is the GPU plugin's kernel tuning cache, read from the plugin's folder.
datas = collect_data_files("openvino", includes=["libs/cache.json"])
datas += copy_metadata("openvino")

# The Python halves of the conversion frontends import torch, tensorflow, jax, paddle, onnx.
excludedimports = [
    f"openvino.frontend.{fe}" for fe in ("pytorch", "tensorflow", "onnx", "paddle", "jax")
]
excludedimports += ["openvino.torch", "openvino.tools.benchmark"]
