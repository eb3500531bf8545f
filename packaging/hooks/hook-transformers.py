"""PyInstaller hook for transformers, replacing pyinstaller-hooks-contrib's.

The bundle uses transformers for one thing: AutoTokenizer on a Dolly folder (GPT-NeoX's fast
tokenizer, no torch) when an older Hub export has no openvino_tokenizer.xml and
core.ov_tokenizer converts it. The contrib hook copies the metadata of every optional
dependency (torch, torchvision, ...), which would make those look installed; and the
TYPE_CHECKING imports in transformers/models/__init__.py would pull in all ~450 model
packages. Here: the model packages that tokenizer loading touches, the metadata transformers
checks at import, nothing from training or pipelines.
"""

from pathlib import Path

from PyInstaller.utils.hooks import copy_metadata, get_package_paths, is_module_satisfies

# transformers >= 5 lists a package's modules by reading its .py files at run time
# (utils.import_utils.define_import_structure): they must be on disk, not only in the PYZ.
module_collection_mode = "pyz+py"

# AutoTokenizer imports the tokenizer class by name (importlib), so name it here.
hiddenimports = [
    "transformers.models.gpt_neox.configuration_gpt_neox",
    "transformers.models.gpt_neox.tokenization_gpt_neox",
]

# What dependency_versions_check.pkgs_to_check_at_runtime reads at import.
datas = []
for dist in (
    "tqdm",
    "regex",
    "packaging",
    "filelock",
    "numpy",
    "tokenizers",
    "huggingface-hub",
    "safetensors",
    "pyyaml",
    "transformers",
):
    if is_module_satisfies(dist):
        datas += copy_metadata(dist)

# Model packages AutoTokenizer/AutoConfig import for a GPT-NeoX folder; the rest stay out.
KEEP_MODELS = {"auto", "gpt_neox", "encoder_decoder", "falcon_mamba"}
_models = Path(get_package_paths("transformers")[1]) / "models"
excludedimports = [
    f"transformers.models.{p.name}"
    for p in sorted(_models.iterdir())
    if p.is_dir() and (p / "__init__.py").is_file() and p.name not in KEEP_MODELS
]
excludedimports += [
    f"transformers.{name}"
    for name in (
        "pipelines",
        "loss",
        "data",
        "cli",
        "commands",
        "quantizers",
        "distributed",
        "kernels",
        "sagemaker",
        "onnx",
        "benchmark",
        "trainer",
        "trainer_callback",
        "trainer_pt_utils",
        "trainer_seq2seq",
        "trainer_utils",
        "trainer_optimizer",
        "trainer_jit_checkpoint",
        "training_args",
        "training_args_seq2seq",
        "testing_utils",
        "hyperparameter_search",
        "optimization",
        "modelcard",
    )
]
