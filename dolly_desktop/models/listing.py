"""The one listing of models: the catalog x what is installed x partial downloads.

The settings dialog's table, `models list --available` and the first-run choice all read it,
so a variant is described the same way everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from dolly_desktop.models.capacity import format_bytes
from dolly_desktop.models.hub.catalog import all_variants
from dolly_desktop.models.store import InstalledModel, Store


@dataclass(frozen=True)
class Listed:
    name: str
    variant: str  # FP16, INT8, INT4 (or PyTorch / FP32 for what a person installed)
    repo_id: str | None  # a ready-made repo on the Hub, if any
    installed: InstalledModel | None
    approx_bytes: int | None  # the catalog's size, None for what is not in it
    ram_bytes: int | None  # the catalog's estimate of the memory to run it
    partial_bytes: int = 0  # bytes of an unfinished download of `repo_id`
    exact_size: bool = False  # approx_bytes came from the Hub: no "about"

    @property
    def label(self) -> str:
        return f"{self.name}/{self.variant}"

    def state(self, in_use: str | None = None) -> str:
        """In words, for the table and the terminal."""
        m = self.installed
        if m is None:
            if self.partial_bytes:
                return f"partly downloaded ({format_bytes(self.partial_bytes)})"
            return "available to download" if self.repo_id else "export from the original"
        if in_use is not None and str(m.path) == in_use:
            return "in use"
        return "installed" if m.runnable else (m.problem or "checkpoint, export it")

    def size_text(self) -> str:
        m = self.installed
        if m is None:
            if not self.approx_bytes:
                return ""
            size = format_bytes(self.approx_bytes)
            return size if self.exact_size else f"about {size}"
        size = format_bytes(m.size_bytes)
        return f"{size} ({m.compression_line})" if m.compression_line else size

    def ram_text(self) -> str:
        return f"about {format_bytes(self.ram_bytes)}" if self.ram_bytes else ""


def list_models(store: Store) -> list[Listed]:
    """Every catalog variant (installed or not), then whatever else the store holds."""
    installed = {(m.name, m.variant): m for m in store.list()}
    partial = {p.repo_id: p.bytes_done for p in store.partial_downloads()}
    rows: list[Listed] = []
    for v in all_variants():  # the catalog, with what the Hub last said
        key = (v.model, v.precision.value)
        rows.append(
            Listed(
                v.model,
                v.precision.value,
                v.repo_id,
                installed.pop(key, None),
                v.download_bytes,
                v.run_ram_bytes,
                partial.get(v.repo_id or "", 0),
                v.exact_size,
            )
        )
    for (name, variant), m in sorted(installed.items()):
        rows.append(Listed(name, variant, None, m, None, None))
    return rows
