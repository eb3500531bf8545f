"""PyInstaller hook for openvino_tokenizers.

The package finds its OpenVINO extension as <folder of the package>/lib/libopenvino_tokenizers.so
(Path(__file__).parent.parent / "openvino_tokenizers" / "lib"); in a one-folder bundle that is
_internal/openvino_tokenizers/lib, where collect_dynamic_libs puts it. Nothing links against it:
it is dlopen'ed by Core.add_extension, so the binary analysis alone would never find it.
"""

from PyInstaller.utils.hooks import collect_dynamic_libs, copy_metadata

binaries = collect_dynamic_libs("openvino_tokenizers")
datas = copy_metadata("openvino-tokenizers")  # the About box shows its version
# Converters for tokenizer formats Dolly does not use (and their heavy optional deps).
excludedimports = ["tiktoken", "sentencepiece"]
