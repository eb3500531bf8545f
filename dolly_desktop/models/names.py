"""Every name that becomes a path in the model store is checked here, and only here.

Names come from people (`models remove --partial ..`) and from servers (a mirror's file list),
so each is refused unless it can only mean one place inside the store: no absolute paths, no
`.` or `..` parts, no backslashes or control characters, none of the app's own bookkeeping
files, nothing too long for a file system. `inside` is the last guard before a delete or write.
"""

from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from dolly_desktop.errors import DollyError
from dolly_desktop.models.catalog import CHECKPOINT

STATE_FILE = "download.json"  # a partial download's repo and commit
META_FILE = "dolly-desktop.json"  # where an installed folder came from; genai ignores it
PART_SUFFIX = ".part"  # a file still arriving
_RESERVED = {n.casefold() for n in (STATE_FILE, META_FILE)}

# FP32 only arrives by import (optimum-cli's default for small models); the app makes the rest.
VARIANTS = ("FP16", "INT8", "INT4", "FP32", CHECKPOINT)
MAX_MODEL_NAME = 100
_NAME_CHARS = "A-Za-z0-9._+-"  # in a regex character class
_MODEL_NAME = re.compile(rf"[A-Za-z0-9][{_NAME_CHARS}]{{0,{MAX_MODEL_NAME - 1}}}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_PART_BYTES = 255 - len(PART_SUFFIX)  # NAME_MAX on Linux, macOS and Windows, with ".part"
MAX_PATH_CHARS = 1024


def model_name(name: str) -> str:
    """A store folder name such as `dolly-v2-3b`."""
    if not _MODEL_NAME.fullmatch(name):
        raise DollyError(
            f"{name!r} cannot be a model name: use up to 100 letters, digits, '.', '+', '-' "
            "or '_', starting with a letter or digit."
        )
    return name


def model_name_like(text: str) -> str:
    """The model name nearest to `text` (a folder's name): other characters become '-'."""
    name = re.sub(rf"[^{_NAME_CHARS}]+", "-", text).strip("-._+") or "model"
    return name[:MAX_MODEL_NAME]


def variant_name(variant: str) -> str:
    if variant not in VARIANTS:
        raise DollyError(f"Unknown variant {variant!r}: choose one of {', '.join(VARIANTS)}.")
    return variant


def repo_id(repo: str) -> str:
    """A Hub repo id (`owner/name`), by huggingface-hub's own rules: these also exclude `..`
    and `--`, so `partial_folder` below maps ids to folders one to one."""
    try:
        validate_repo_id(repo)
    except HFValidationError:
        raise DollyError(
            f"{repo!r} is not a Hub repo id: use owner/name, e.g. OpenVINO/dolly-v2-3b-int4-ov."
        ) from None
    return repo


def partial_folder(repo: str) -> str:
    """The folder name of a partial download of `repo`."""
    return repo_id(repo).replace("/", "--")


def repo_of_partial_folder(folder: str) -> str:
    return folder.replace("--", "/", 1)


def hub_file_name(name: str, repo: str) -> str:
    """A file name from a repo listing, to be written under the download's own folder."""
    problem = _file_name_problem(name)
    if problem:
        raise DollyError(
            f"{repo} lists a file with an unsafe name, {name!r} ({problem}): nothing was written."
        )
    return name


def _file_name_problem(name: str) -> str | None:
    if not name:
        return "empty"
    if len(name) > MAX_PATH_CHARS:
        return f"longer than {MAX_PATH_CHARS} characters"
    if _CONTROL.search(name):
        return "a control character"
    if "\\" in name:
        return "a backslash"
    if name.startswith("/"):
        return "an absolute path"
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "an empty, '.' or '..' part"
    if any(len(p.encode("utf-8", "surrogatepass")) > MAX_PART_BYTES for p in parts):
        return f"a part longer than {MAX_PART_BYTES} bytes"
    if name.casefold() in _RESERVED:
        return "the name of the app's own bookkeeping file"
    if name.endswith(PART_SUFFIX):
        return f"the app's {PART_SUFFIX} suffix for files still arriving"
    return None


def inside(root: Path, path: Path) -> Path:
    """`path`, once it is sure to resolve (symlinks followed) strictly inside `root`."""
    real_root, real = Path(root).resolve(), Path(path).resolve()
    if real == real_root or not real.is_relative_to(real_root):
        raise DollyError(f"{path} is not inside {root}: refusing to delete or write it.")
    return path
