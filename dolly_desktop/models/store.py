"""The model store: one folder per model and variant, e.g. `<data>/models/dolly-v2-3b/INT4`.

Every way in (download, import, export, compression) builds the folder with
`atomic.staged_folder` and checks it with `folder.inspect_model_dir`, so a folder in the
store is either whole or absent. Long jobs report `(stage, fraction)`; downloads report
`TransferProgress`. Cancel is a `threading.Event` set from any thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from dolly_desktop import paths
from dolly_desktop.atomic import staged_folder
from dolly_desktop.errors import DollyError
from dolly_desktop.models import names
from dolly_desktop.models.cancel import Progress, raise_if_cancelled
from dolly_desktop.models.capacity import DEFAULT_KEEP_FREE, check_disk, check_memory
from dolly_desktop.models.catalog import (
    CHECKPOINT,
    EXPORT_RAM_FACTOR,
    compressed_bytes,
    export_disk_bytes,
    get_model,
)
from dolly_desktop.models.chat_template import write_chat_template
from dolly_desktop.models.convert.compress import Int4Options, compress_ir
from dolly_desktop.models.convert.export import export_checkpoint
from dolly_desktop.models.folder import (
    CHECKPOINT_PATTERNS,
    MODEL_BIN,
    MODEL_XML,
    Precision,
    inspect_model_dir,
    is_checkpoint,
    read_config,
)
from dolly_desktop.models.hub.download import (
    RepoListing,
    TransferCallback,
    download_repo,
    hub_endpoint,
    partial_bytes,
)
from dolly_desktop.models.names import META_FILE, STATE_FILE, VARIANTS

log = logging.getLogger(__name__)

# The OpenVINO notebook's own folders, inside a folder named after the model.
NOTEBOOK_LAYOUT = {
    "FP16": "FP16",
    "INT8_compressed_weights": "INT8",
    "INT4_compressed_weights": "INT4",
}
DOWNLOADS = ".downloads"  # partial downloads, kept across runs for resuming
_ELEMENT_TYPE = re.compile(rb'element_type="(\w+)"')
COPY_CHUNK = 8 << 20


@dataclass(frozen=True)
class InstalledModel:
    name: str  # dolly-v2-3b
    variant: str  # FP16, INT8, INT4, FP32 or PyTorch
    path: Path
    size_bytes: int  # every file in the folder
    weights_bytes: int  # openvino_model.bin, or the checkpoint's weight files
    compression_rate: float | None  # FP16 weights / these, when the FP16 is installed too
    source: str  # where it came from ("" when unknown)
    problem: str | None  # why it cannot be used, None when it is fine

    @property
    def label(self) -> str:
        return f"{self.name}/{self.variant}"

    @property
    def runnable(self) -> bool:
        return self.problem is None and self.variant != CHECKPOINT

    @property
    def compression_line(self) -> str | None:
        """As the OpenVINO notebook prints it."""
        if self.compression_rate is None:
            return None
        return f"Compression rate: {self.compression_rate:.3f}"


@dataclass(frozen=True)
class ImportItem:
    src: Path
    name: str
    variant: str


@dataclass(frozen=True)
class ImportPlan:
    kind: str  # "ir", "notebook" (several variants) or "checkpoint" (to export)
    src: Path
    name: str
    items: tuple[ImportItem, ...]  # empty for a checkpoint


@dataclass(frozen=True)
class PartialDownload:
    repo_id: str
    path: Path
    bytes_done: int


def detect_precision(model_dir: Path) -> str:
    """The weight precision of an IR, from the element types its constants use."""
    types = set(_ELEMENT_TYPE.findall((model_dir / MODEL_XML).read_bytes()))
    if types & {b"u4", b"i4", b"nf4"}:
        return "INT4"  # INT4 with ratio < 1 keeps some INT8 layers too
    if types & {b"u8", b"i8"}:
        return "INT8"
    return "FP16" if b"f16" in types else "FP32"


def checkpoint_bytes(path: Path) -> int:
    return sum(f.stat().st_size for pat in CHECKPOINT_PATTERNS for f in path.glob(pat))


def _check_checkpoint(path: Path) -> None:
    if not is_checkpoint(path):
        raise DollyError(f"{path} is not a PyTorch checkpoint folder (config.json and weights).")


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class Store:
    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else paths.models_dir()

    # -- names and places -------------------------------------------------------------------

    def path_for(self, name: str, variant: str) -> Path:
        return self.root / names.model_name(name) / names.variant_name(variant)

    @staticmethod
    def default_name(src: Path) -> str:
        """A store name for a folder: its own name, or its parent's for `.../dolly-v2-3b/INT4`."""
        src = Path(src).expanduser().absolute()
        base = src.parent.name if src.name in VARIANTS or src.name in NOTEBOOK_LAYOUT else src.name
        return names.model_name_like(base)

    def _partial_dir(self, repo_id: str) -> Path:
        """Where a partial download of `repo_id` is kept: refused unless it is (symlinks
        followed) inside `.downloads` and inside the store's real path, so that neither a
        `.downloads` nor a partial folder that is a link to elsewhere is ever written or
        deleted."""
        downloads = self.root / DOWNLOADS
        folder = downloads / names.partial_folder(repo_id)
        if folder.is_symlink():
            raise DollyError(f"{folder} is a link, not a partial download: refusing to use it.")
        return names.inside(self.root, names.inside(downloads, folder))

    # -- what is installed ------------------------------------------------------------------

    def list(self) -> list[InstalledModel]:
        """Every model folder in the store, sorted, with sizes and any problem found."""
        found = []
        if not self.root.is_dir():
            return []
        for family in sorted(self.root.iterdir()):
            if family.name.startswith(".") or not family.is_dir():
                continue
            for folder in sorted(family.iterdir()):
                if not folder.name.startswith(".") and folder.is_dir():
                    found.append(self._describe(family.name, folder.name))
        return found

    def get(self, name: str, variant: str) -> InstalledModel:
        if not self.path_for(name, variant).is_dir():
            raise DollyError(f"{name}/{variant} is not installed.")
        return self._describe(name, variant)

    def _describe(self, name: str, variant: str) -> InstalledModel:
        path = self.root / name / variant
        problem: str | None = None
        weights = 0
        if variant == CHECKPOINT:
            weights = checkpoint_bytes(path)
            if not is_checkpoint(path):
                problem = "not a complete PyTorch checkpoint"
        else:
            try:
                weights = inspect_model_dir(path).weights_bytes
            except DollyError as e:
                problem = str(e)
        rate = None
        fp16_bin = self.root / name / "FP16" / MODEL_BIN
        if variant not in ("FP16", CHECKPOINT) and weights and fp16_bin.is_file():
            rate = fp16_bin.stat().st_size / weights
        return InstalledModel(
            name=name,
            variant=variant,
            path=path,
            size_bytes=_folder_bytes(path),
            weights_bytes=weights,
            compression_rate=rate,
            source=self._read_source(path),
            problem=problem,
        )

    @staticmethod
    def _read_source(path: Path) -> str:
        try:
            return str(json.loads((path / META_FILE).read_text(encoding="utf-8"))["source"])
        except (OSError, ValueError, KeyError, TypeError):
            return ""

    @staticmethod
    def _write_source(path: Path, source: str) -> None:
        """What every install writes into its staging folder: where it came from, and Dolly's
        chat template (for servers that format chats themselves, such as OVMS)."""
        meta = {"source": source, "installed": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (path / META_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        write_chat_template(path)

    def remove(self, name: str, variant: str) -> None:
        path = names.inside(self.root, self.path_for(name, variant))
        if not path.is_dir():
            raise DollyError(f"{name}/{variant} is not installed.")
        # Rename first (under a staging name, so cleanup() finishes an interrupted removal):
        # a removal cut short never leaves half a model that looks installed.
        trash = path.parent / f".{variant}.partial-removing-{os.getpid()}-{time.monotonic_ns()}"
        try:
            os.replace(path, trash)
        except OSError as e:
            raise DollyError(f"{path} cannot be removed ({e.strerror}): is it in use?") from e
        shutil.rmtree(trash, ignore_errors=True)
        self._drop_if_empty(path.parent)
        log.info("removed %s", path)

    def cleanup(self) -> None:
        """Remove staging folders left by a job that was killed (call at start-up).

        Only real folders inside the store's real path: a model folder (or a staging name) that
        is a link to elsewhere is skipped with one line in the log, never followed."""
        if not self.root.is_dir():
            return
        for parent in [self.root, *sorted(self.root.iterdir())]:
            if parent != self.root and (parent.name.startswith(".") or not parent.is_dir()):
                continue
            if parent != self.root and not self._really_inside(parent):
                continue
            for stale in sorted(parent.glob(".*.partial-*")):
                if self._really_inside(stale):
                    shutil.rmtree(stale, ignore_errors=True)
            if parent != self.root:
                self._drop_if_empty(parent)

    def _really_inside(self, path: Path) -> bool:
        """`path` is no link and resolves inside the store's real path; else one log line."""
        try:
            if not path.is_symlink():
                names.inside(self.root, path)
                return True
            why = "it is a link"
        except DollyError:
            why = "it leads outside the store"
        log.warning("cleanup skipped %s: %s (%s)", path, why, self.root.resolve())
        return False

    @staticmethod
    def _drop_if_empty(folder: Path) -> None:
        with contextlib.suppress(OSError):
            folder.rmdir()  # only succeeds when empty

    # -- downloads --------------------------------------------------------------------------

    def partial_downloads(self) -> list[PartialDownload]:
        """Downloads that were stopped or cut off; `download` again resumes them."""
        found = []
        base = self.root / DOWNLOADS
        for folder in sorted(base.iterdir()) if base.is_dir() else []:
            try:
                repo_id = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))["repo_id"]
            except (OSError, ValueError, KeyError, TypeError):
                repo_id = names.repo_of_partial_folder(folder.name)
            found.append(PartialDownload(repo_id, folder, partial_bytes(folder)))
        return found

    def discard_partial(self, repo_id: str) -> None:
        folder = self._partial_dir(repo_id)
        if not folder.is_dir():
            raise DollyError(f"There is no partial download of {repo_id}.")
        shutil.rmtree(folder)

    def download(
        self,
        name: str,
        variant: str,
        *,
        repo_id: str | None = None,
        revision: str = "main",
        endpoint: str | None = None,
        token: str | bool | None = None,
        progress: TransferCallback | None = None,
        cancel: threading.Event | None = None,
        retries: int = 5,
        keep_free: int = DEFAULT_KEEP_FREE,
    ) -> InstalledModel:
        """Download `name/variant` (a catalog model, or any repo given as `repo_id`).

        Cancel or a failure keeps the bytes fetched so far under `.downloads`; nothing is
        installed until every file passes its check (sha256, git blob id, or size where a
        mirror gives nothing more).
        """
        dest = self.path_for(name, variant)
        if repo_id is None:
            repo_id = self._catalog_repo(name, variant)
        endpoint = hub_endpoint(endpoint)

        def on_staged(out: Path, listing: RepoListing) -> None:
            self._write_source(out, f"{repo_id}@{listing.commit} from {endpoint}")

        def require(listing: RepoListing) -> None:  # refuse before fetching gigabytes
            names = [f.name for f in listing.files]
            if variant == CHECKPOINT:
                weights = any(fnmatch(n, p) for n in names for p in CHECKPOINT_PATTERNS)
                if "config.json" not in names or not weights:
                    raise DollyError(
                        f"{repo_id} holds no PyTorch checkpoint (config.json and weights)."
                    )
            elif MODEL_XML not in names or MODEL_BIN not in names:
                raise DollyError(
                    f"{repo_id} holds no OpenVINO model ({MODEL_XML}): choose an OpenVINO "
                    "repo, or download the checkpoint and export it."
                )

        try:
            download_repo(
                repo_id,
                dest,
                self._partial_dir(repo_id),
                revision=revision,
                endpoint=endpoint,
                token=token,
                check=_check_checkpoint if variant == CHECKPOINT else inspect_model_dir,
                require=require,
                on_staged=on_staged,
                progress=progress,
                cancel=cancel,
                retries=retries,
                keep_free=keep_free,
            )
        finally:
            self._drop_if_empty(self.root / DOWNLOADS)
        return self._describe(name, variant)

    @staticmethod
    def _catalog_repo(name: str, variant: str) -> str:
        model = get_model(name)
        if variant == CHECKPOINT:
            return model.source_repo
        repo = model.variant(Precision.parse(variant)).repo_id
        if repo is None:
            raise DollyError(
                f"There is no ready-made {variant} of {name} on the Hub: download its "
                f"checkpoint ({model.source_repo}) and export it to {variant}."
            )
        return repo

    # -- import -----------------------------------------------------------------------------

    def plan_import(
        self, src: Path, name: str | None = None, precision: str | None = None
    ) -> ImportPlan:
        """What importing `src` would install (the dialog can show it before copying)."""
        src = Path(src).expanduser().absolute()
        if not src.is_dir():
            inspect_model_dir(src)  # its sentence: no folder / a file, not a folder
        variant = Precision.parse(precision).value if precision else None
        name = names.model_name(name or self.default_name(src))  # refused before any copy
        if (src / MODEL_XML).is_file():
            v = variant or NOTEBOOK_LAYOUT.get(src.name) or detect_precision(src)
            return ImportPlan("ir", src, name, (ImportItem(src, name, v),))
        subs = [
            ImportItem(src / d, name, v)
            for d, v in {**NOTEBOOK_LAYOUT, **{v: v for v in VARIANTS if v != CHECKPOINT}}.items()
            if (src / d / MODEL_XML).is_file()
        ]
        if subs:
            return ImportPlan("notebook", src, name, tuple(subs))
        if is_checkpoint(src):
            return ImportPlan("checkpoint", src, name, ())
        inspect_model_dir(src)  # raises the reason it is not a model folder
        raise DollyError(f"{src} holds no model to import.")  # unreachable in practice

    def import_folder(
        self,
        src: Path,
        name: str | None = None,
        precision: str | None = None,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
        keep_free: int = DEFAULT_KEEP_FREE,
    ) -> list[InstalledModel]:
        """Copy an IR folder, or each variant of the notebook's layout, into the store.

        Variants already installed are skipped; a PyTorch checkpoint is refused (export it).
        """
        plan = self.plan_import(src, name, precision)
        if plan.kind == "checkpoint":
            raise DollyError(
                f"{plan.src} holds a PyTorch checkpoint: export it (dolly-desktop models export)."
            )
        todo = [i for i in plan.items if not self.path_for(i.name, i.variant).exists()]
        if not todo:
            raise DollyError(
                f"{', '.join(f'{i.name}/{i.variant}' for i in plan.items)} "
                "already installed: remove it first to import it again."
            )
        for item in todo:
            inspect_model_dir(item.src)  # refuse a broken source before copying anything
        total = sum(_folder_bytes(i.src) for i in todo)
        check_disk(self.root, total, f"Importing {plan.src.name}", keep_free=keep_free)
        report = _Copied(total, progress)
        done = []
        for item in todo:
            dest = self.path_for(item.name, item.variant)
            with staged_folder(dest, check=inspect_model_dir) as out:
                _copy_tree(item.src, out, report, cancel)
                self._write_source(out, f"imported from {item.src}")
            done.append(self._describe(item.name, item.variant))
            log.info("imported %s into %s", item.src, dest)
        report.stage("done", 1.0)
        return done

    def resolve_checkpoint(self, text: str) -> Path:
        """A checkpoint folder given as a path, or as the name of one downloaded to the store."""
        path = Path(text).expanduser()
        if path.exists():
            return path.absolute()
        with contextlib.suppress(DollyError):  # not a store name either: the sentence below
            if (stored := self.path_for(text, CHECKPOINT)).is_dir():
                return stored
        raise DollyError(
            f"There is no folder {text} and no downloaded checkpoint of that name in the store."
        )

    # -- export and compression -------------------------------------------------------------

    def export(
        self,
        src: Path,
        precision: Precision,
        int4: Int4Options | None = None,
        name: str | None = None,
        progress: Progress | None = None,
        keep_free: int = DEFAULT_KEEP_FREE,
        available_memory: int | None = None,
    ) -> InstalledModel:
        """Export a PyTorch checkpoint into `name/precision` (in this process: see jobs.py)."""
        report = progress or (lambda stage, frac: None)
        src = Path(src).expanduser().absolute()
        name = name or self.default_name(src)
        dest = self.path_for(name, precision.value)
        if dest.exists():
            raise DollyError(f"{name}/{precision.value} is already installed: remove it first.")
        _check_checkpoint(src)
        fp16 = _fp16_bytes(src)
        what = f"Exporting {src.name} to {precision.value}"
        check_memory(int(fp16 * EXPORT_RAM_FACTOR), what, available_memory)
        check_disk(self.root, export_disk_bytes(fp16, precision), what, keep_free=keep_free)
        dest.parent.mkdir(parents=True, exist_ok=True)
        # export_checkpoint stages its own folder and an FP16 temp beside its destination: give
        # it a private work folder named like staging, so one cleanup() of the
        # model's folder clears everything if this process is killed.
        work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-export-", dir=dest.parent))
        try:
            report("preparing", 0.0)
            out = export_checkpoint(
                src,
                work / "model",
                precision,
                int4,
                progress=lambda stage, frac: report(stage, 0.97 * frac),
            )
            report("installing", 0.97)
            with staged_folder(dest, check=inspect_model_dir) as staging:
                for item in out.iterdir():
                    os.replace(item, staging / item.name)
                self._write_source(staging, f"exported from {src}")
        finally:
            shutil.rmtree(work, ignore_errors=True)
            self._drop_if_empty(dest.parent)
        report("done", 1.0)
        return self._describe(name, precision.value)

    def compress(
        self,
        name: str,
        precision: Precision,
        int4: Int4Options | None = None,
        progress: Progress | None = None,
        keep_free: int = DEFAULT_KEEP_FREE,
        available_memory: int | None = None,
    ) -> InstalledModel:
        """Compress the installed `name/FP16` IR to INT8/INT4 with NNCF (no torch)."""
        report = progress or (lambda stage, frac: None)
        if precision is Precision.FP16:
            raise DollyError("FP16 is not a compression: choose INT8 or INT4.")
        src = self.path_for(name, "FP16")
        if not src.is_dir():
            raise DollyError(f"{name}/FP16 is not installed: download or export it first.")
        fp16 = inspect_model_dir(src).weights_bytes
        dest = self.path_for(name, precision.value)
        if dest.exists():
            raise DollyError(f"{name}/{precision.value} is already installed: remove it first.")
        size = compressed_bytes(fp16, precision, (int4 or Int4Options()).ratio)
        what = f"Compressing {name} to {precision.value}"
        # A lower bound (not measured): NNCF holds the FP16 model and builds the compressed one.
        check_memory(fp16 + size, what, available_memory)
        check_disk(self.root, size, what, keep_free=keep_free)
        report("compressing", 0.05)
        with staged_folder(dest, check=inspect_model_dir) as out:
            compress_ir(src, out, precision, int4)
            report("checking", 0.9)
            self._write_source(out, f"compressed from {name}/FP16 with NNCF")
        report("done", 1.0)
        return self._describe(name, precision.value)


def _fp16_bytes(checkpoint: Path) -> int:
    """Size of the checkpoint's weights at 16 bits (a float32 checkpoint is twice that)."""
    cfg = read_config(checkpoint)
    dtype = cfg.get("dtype") or cfg.get("torch_dtype")
    size = checkpoint_bytes(checkpoint)
    return size // 2 if dtype == "float32" else size


class _Copied:
    """Bytes copied so far as a (stage, fraction) report, at most every 0.1 s."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total, self.done, self.progress, self._last = total, 0, progress, 0.0

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= 0.1:
            self._last = now
            self.stage("copying", self.done / self.total if self.total else 1.0)

    def stage(self, stage: str, fraction: float) -> None:
        if self.progress is not None:
            self.progress(stage, fraction)


def _copy_tree(src: Path, dst: Path, report: _Copied, cancel: threading.Event | None) -> None:
    """Copy a folder in chunks, so a 6 GB copy shows progress and stops on cancel."""
    for item in sorted(src.rglob("*")):
        target = dst / item.relative_to(src)
        if item.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(item, "rb") as fin, open(target, "wb") as fout:
            while chunk := fin.read(COPY_CHUNK):
                raise_if_cancelled(cancel)
                fout.write(chunk)
                report.add(len(chunk))
        shutil.copystat(item, target)
