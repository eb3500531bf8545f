"""PyInstaller hook for openvino_genai.

py_openvino_genai imports the Python package openvino_tokenizers from C++ to read the
tokenizers extension's path (openvino_tokenizers._ext_path) and hands it to the C++ side
(OPENVINO_TOKENIZERS_PATH_GENAI): PyInstaller cannot see that import.
"""

from PyInstaller.utils.hooks import collect_dynamic_libs, copy_metadata

binaries = collect_dynamic_libs("openvino_genai", search_patterns=["lib*.so", "lib*.so.*"])
hiddenimports = ["openvino", "openvino_tokenizers"]
datas = copy_metadata("openvino-genai")  # the About box shows its version
