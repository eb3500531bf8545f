"""`models check`: one installed variant's agreement with its reference over a prompt set,
stored beside the variant (models/checks.py) for the settings dialog and `models list`."""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dolly_desktop.compare.agreement import Agreement, Progress, Prompt, Tokens, measure
from dolly_desktop.compare.prompts import CheckPrompt
from dolly_desktop.errors import DollyError
from dolly_desktop.generation.prompt import build_prompt
from dolly_desktop.models.capacity import check_disk, check_memory
from dolly_desktop.models.checks import CheckRecord, cpu_name, write_check
from dolly_desktop.models.choice import PRECISION_RANK, run_ram_bytes
from dolly_desktop.models.folder import read_config
from dolly_desktop.models.store import InstalledModel, Store

DEFAULT_MAX_NEW_TOKENS = 48  # per prompt: bench/agreement.py's steps
MAX_NEW_TOKENS_LIMIT = 1000
VOCAB = 50280  # Dolly's, when config.json does not say


def find_installed(store: Store, label: str) -> InstalledModel:
    """An installed, runnable variant by `NAME/VARIANT`; one sentence naming what is there."""
    name, _, variant = label.strip().strip("/").partition("/")
    installed = [m for m in store.list() if m.runnable]
    for m in installed:
        if m.name == name and m.variant == variant.upper():
            return m
    here = ", ".join(m.label for m in installed) or "none yet (see: dolly-desktop models)"
    if not variant:
        raise DollyError(
            f"Say which variant of {name} to check, e.g. {name}/INT4. Installed: {here}."
        )
    raise DollyError(f"There is no installed model called {label}. Installed: {here}.")


def choose_reference(store: Store, target: InstalledModel, against: str | None) -> InstalledModel:
    """`against` (a variant of the same model, or NAME/VARIANT), else the same model's FP16,
    else its highest precision above the target's."""
    if against:
        label = against if "/" in against else f"{target.name}/{against}"
        ref = find_installed(store, label)
        if ref.path == target.path:
            raise DollyError(f"{target.label} against itself agrees 100% by definition: "
                             "choose another reference.")  # fmt: skip
        return ref
    rank = PRECISION_RANK.get(target.variant, -1)
    higher = [
        m for m in store.list()
        if m.runnable and m.name == target.name and PRECISION_RANK.get(m.variant, -1) > rank
    ]  # fmt: skip
    fp16 = [m for m in higher if m.variant == "FP16"]
    if fp16:
        return fp16[0]
    if higher:
        return max(higher, key=lambda m: PRECISION_RANK[m.variant])
    raise DollyError(
        f"{target.label} has no installed variant of higher precision to compare with: "
        "install its FP16 (dolly-desktop models download/compress), or give --against."
    )


@dataclass(frozen=True)
class CheckResult:
    target: InstalledModel
    reference: InstalledModel
    agreement: Agreement
    record: CheckRecord
    stored: Path | None


def tokenize(tokens: Tokens, prompts: Sequence[CheckPrompt], max_new_tokens: int) -> list[Prompt]:
    """The prompts in Dolly's template as tokens; one that leaves no room is refused."""
    out = []
    for p in prompts:
        ids = tokens.encode(build_prompt(p.instruction, p.context))
        if len(ids) + max_new_tokens > tokens.context_length:
            raise DollyError(
                f"The prompt {p.instruction[:40]!r} takes {len(ids)} tokens: with "
                f"{max_new_tokens} new ones it passes the model's {tokens.context_length}."
            )
        out.append(Prompt(ids, p.category))
    return out


def run_check(
    store: Store,
    target: InstalledModel,
    reference: InstalledModel,
    prompts: Sequence[CheckPrompt],
    prompt_set: str,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    store_result: bool = True,
) -> CheckResult:
    """Measure, then store the record in the target's folder (nothing is stored if it fails
    or is cancelled)."""
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
        raise DollyError(
            f"--max-new-tokens must be 1 to {MAX_NEW_TOKENS_LIMIT}; got {max_new_tokens}."
        )
    ref_tokens, cand_tokens = Tokens(reference.path), Tokens(target.path)
    if not ref_tokens.same_as(cand_tokens):
        raise DollyError(f"{target.label} and {reference.label} do not share a tokenizer: "
                         "their agreement cannot be measured token by token.")  # fmt: skip
    ids = tokenize(ref_tokens, prompts, max_new_tokens)
    # One model at a time: the larger one must fit. The reference's rows wait on disk.
    big = max(target, reference, key=run_ram_bytes)
    check_memory(run_ram_bytes(big), f"Checking with {big.label}")
    vocab = int(read_config(reference.path).get("vocab_size") or VOCAB)
    check_disk(Path(tempfile.gettempdir()), len(ids) * max_new_tokens * vocab * 4,
               "The reference's logits", keep_free=0)  # fmt: skip
    t0 = time.perf_counter()
    (agreement,) = measure(reference.path, [target.path], ids, max_new_tokens,
                           stops=ref_tokens.stops, progress=progress, cancel=cancel)  # fmt: skip
    overall = agreement.overall
    record = CheckRecord(
        model=target.name,
        variant=target.variant,
        reference=reference.label,
        top1=round(overall.top1, 6),
        mean_kl=round(overall.mean_kl, 6),
        median_first_divergence=overall.median_first_divergence,
        prompts=overall.prompts,
        tokens=overall.tokens,
        max_new_tokens=max_new_tokens,
        prompt_set=prompt_set,
        date=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        cpu=cpu_name(),
        categories={c: s.as_dict() for c, s in agreement.by_category().items()},
        seconds=round(time.perf_counter() - t0, 1),
    )
    stored = write_check(target.path, record) if store_result else None
    return CheckResult(target, reference, agreement, record, stored)
