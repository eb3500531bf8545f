"""How far one model's next-token choices stray from a reference's, teacher-forced.

The reference decodes greedily from each prompt (until `### End`, EOS or the token budget).
The candidate is then fed the reference's own tokens one at a time (teacher forcing: one early
difference does not decide all that follows), and at every step its logits are set against the
reference's: top-1 agreement (the same most likely token) and KL(reference || candidate) in
nats. The first step whose top-1 differs is where the two greedy answers part: until then both
saw the same tokens, so the candidate's greedy answer is the reference's up to there.

Logits come from the plain OpenVINO runtime (the IR's `logits` output; openvino-genai gives
none), step by step for both models, so a model set against itself gives exactly 100 % and KL
0. One model is compiled at a time: the reference's rows wait on disk while the candidate runs.
bench/agreement.py measures CPU settings with the same code.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dolly_desktop.errors import DollyError
from dolly_desktop.models.cancel import raise_if_cancelled
from dolly_desktop.models.folder import MODEL_XML

# Exact arithmetic: f32 inference and KV cache, no dynamic quantization (bench's reference).
EXACT = {
    "INFERENCE_PRECISION_HINT": "f32",
    "KV_CACHE_PRECISION": "f32",
    "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0,
}
GENAI_ONLY = ("ATTENTION_BACKEND", "CACHE_DIR")  # genai's keys, not the CPU plugin's


def app_properties(model_dir: Path) -> dict[str, Any]:
    """The CPU properties the app's engine runs this model with (generation/cpu_tuning.py),
    less genai's own keys: the agreement a person gets from the app on this computer."""
    from dolly_desktop.generation.engines.local import cpu_defaults

    return {k: v for k, v in cpu_defaults(Path(model_dir)).items() if k not in GENAI_ONLY}


class LogitsModel:
    """One IR compiled on the plain OpenVINO runtime, decoding one token at a time."""

    def __init__(self, model_dir: Path, properties: dict[str, Any] | None = None) -> None:
        import openvino as ov

        self.model_dir = Path(model_dir)
        try:
            compiled = ov.Core().compile_model(
                self.model_dir / MODEL_XML, "CPU", dict(properties or {})
            )
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DollyError(f"The model in {self.model_dir} could not be loaded: {first}") from e
        self._inputs = {name for port in compiled.inputs for name in port.get_names()}
        self._req = compiled.create_infer_request()

    def _step(self, chunk: Sequence[int], pos: int) -> np.ndarray:
        n = len(chunk)
        feed = {
            "input_ids": np.array([chunk], dtype=np.int64),
            "attention_mask": np.ones((1, pos + n), dtype=np.int64),
            "position_ids": np.arange(pos, pos + n, dtype=np.int64)[None],
            "beam_idx": np.zeros(1, dtype=np.int32),
        }
        self._req.infer({k: v for k, v in feed.items() if k in self._inputs})
        return self._req.get_tensor("logits").data[0, -1].astype(np.float32)

    def decode(
        self,
        prompt: Sequence[int],
        steps: int,
        forced: Sequence[int] | None = None,
        stops: Iterable[int] = (),
        cancel: threading.Event | None = None,
    ) -> tuple[list[int], np.ndarray]:
        """Greedy decoding (or the `forced` tokens fed in turn) from `prompt`: the tokens fed
        after it and one logits row per step. Greedy ends after a token in `stops`."""
        if not prompt:
            raise DollyError("An empty prompt cannot be decoded.")
        stops = set(stops)
        steps = len(forced) if forced is not None else steps
        self._req.reset_state()
        tokens: list[int] = []
        rows: list[np.ndarray] = []
        chunk, pos = list(prompt), 0
        for step in range(steps):
            raise_if_cancelled(cancel)
            row = self._step(chunk, pos)
            rows.append(row.copy())
            pos += len(chunk)
            nxt = int(forced[step]) if forced is not None else int(row.argmax())
            tokens.append(nxt)
            chunk = [nxt]
            if forced is None and nxt in stops:
                break
        return tokens, np.stack(rows) if rows else np.zeros((0, 0), np.float32)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


@dataclass(frozen=True)
class PromptScore:
    """One prompt: the reference's answer length, the steps whose top-1 agreed, the summed KL
    and the first step whose top-1 differed (None: the greedy answers are the same)."""

    category: str
    tokens: int
    agreed: int
    kl_sum: float
    first_divergence: int | None


def score(ref_rows: np.ndarray, cand_rows: np.ndarray, category: str = "") -> PromptScore:
    """Set one prompt's candidate rows against the reference's, step by step."""
    if ref_rows.shape != cand_rows.shape:
        raise DollyError(
            "The two models do not share a vocabulary "
            f"({ref_rows.shape[-1]} and {cand_rows.shape[-1]} tokens): no agreement to measure."
        )
    same = ref_rows.argmax(axis=1) == cand_rows.argmax(axis=1)
    lp, lq = _log_softmax(ref_rows), _log_softmax(cand_rows)
    kl = float(np.maximum((np.exp(lp) * (lp - lq)).sum(axis=1), 0.0).sum())
    differ = np.flatnonzero(~same)
    first = int(differ[0]) if differ.size else None
    return PromptScore(category, len(same), int(same.sum()), kl, first)


def compare_rows(ref: list[np.ndarray], cand: list[np.ndarray]) -> tuple[float, float]:
    """Top-1 agreement (share of steps) and mean KL(ref || cand) in nats, over several
    prompts' rows."""
    s = summarize([score(r, c) for r, c in zip(ref, cand, strict=True)])
    return s.top1, s.mean_kl


@dataclass(frozen=True)
class Summary:
    prompts: int
    tokens: int
    top1: float  # share of steps, weighted by tokens
    mean_kl: float  # nats per token
    median_first_divergence: float | None  # None: half the answers or more never parted
    identical: int  # prompts whose greedy answers are the same

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompts": self.prompts,
            "tokens": self.tokens,
            "top1": round(self.top1, 6),
            "mean_kl": round(self.mean_kl, 6),
            "median_first_divergence": self.median_first_divergence,
            "identical": self.identical,
        }


def summarize(scores: Sequence[PromptScore]) -> Summary:
    tokens = sum(s.tokens for s in scores)
    parts = [s.first_divergence if s.first_divergence is not None else np.inf for s in scores]
    median = statistics.median(parts) if parts else np.inf
    return Summary(
        prompts=len(scores),
        tokens=tokens,
        top1=sum(s.agreed for s in scores) / tokens if tokens else 1.0,
        mean_kl=sum(s.kl_sum for s in scores) / tokens if tokens else 0.0,
        median_first_divergence=None if np.isinf(median) else float(median),
        identical=sum(s.first_divergence is None for s in scores),
    )


@dataclass
class Agreement:
    """The result of `measure`: one score per prompt, summed up overall and per category."""

    scores: list[PromptScore] = field(default_factory=list)

    @property
    def overall(self) -> Summary:
        return summarize(self.scores)

    def by_category(self) -> dict[str, Summary]:
        cats = dict.fromkeys(s.category for s in self.scores)
        return {c: summarize([s for s in self.scores if s.category == c]) for c in cats}


@dataclass(frozen=True)
class Prompt:
    """A prompt as tokens, with the category it counts under."""

    ids: list[int]
    category: str = ""


Progress = Callable[[str, int, int], None]  # (phase, done, total)
Properties = Callable[[Path], dict[str, Any]]


def measure(
    reference: Path,
    candidates: Sequence[Path],
    prompts: Sequence[Prompt],
    max_new_tokens: int,
    stops: Iterable[int] = (),
    properties: Properties = app_properties,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    work_dir: Path | None = None,
) -> list[Agreement]:
    """Teacher-forced agreement of each candidate with `reference` over `prompts`.

    The reference runs first, alone; its rows wait in a temporary folder (in `work_dir`, else
    the system's) while the candidates run in turn, so one model is in memory at a time.
    `properties(folder)` gives each model's CPU properties: the app's by default, `EXACT`
    for arithmetic without shortcuts. Progress phases: "reference", then each candidate's
    folder name; `cancel` is checked before every step (models.cancel.Cancelled)."""
    report = progress or (lambda phase, done, total: None)
    tmp = Path(tempfile.mkdtemp(prefix="dolly-agreement-", dir=work_dir))
    try:
        answers: list[list[int]] = []
        model: LogitsModel | None = LogitsModel(reference, properties(Path(reference)))
        for i, p in enumerate(prompts):
            report("reference", i, len(prompts))
            tokens, rows = model.decode(p.ids, max_new_tokens, stops=stops, cancel=cancel)
            np.save(tmp / f"{i}.npy", rows)
            answers.append(tokens)
        model = None  # freed before the next one loads
        report("reference", len(prompts), len(prompts))
        results = []
        for cand in candidates:
            result = Agreement()
            model = LogitsModel(cand, properties(Path(cand)))
            for i, (p, answer) in enumerate(zip(prompts, answers, strict=True)):
                report(Path(cand).name, i, len(prompts))
                _, rows = model.decode(p.ids, 0, forced=answer, cancel=cancel)
                result.scores.append(score(np.load(tmp / f"{i}.npy"), rows, p.category))
            model = None
            report(Path(cand).name, len(prompts), len(prompts))
            results.append(result)
        return results
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# A text that reaches Dolly's added tokens and a byte-level merge or two: two tokenizers that
# split it alike are taken for the same (every Dolly has GPT-NeoX-20B's plus three tokens).
_PROBE = "### Instruction:\nWho is Dolly? Ünïcode, 2048 tokens…\n\n### Response:\n### End"


class Tokens:
    """A model folder's own tokenizer (openvino-tokenizers, as the engine uses it) and the
    tokens greedy decoding stops at: EOS and `### End`."""

    def __init__(self, model_dir: Path) -> None:
        import openvino_genai as ov_genai

        from dolly_desktop.generation.prompt import find_end_token_id
        from dolly_desktop.models.convert.tokenizer import convert_tokenizer_files
        from dolly_desktop.models.folder import inspect_model_dir

        info = inspect_model_dir(Path(model_dir))
        if not info.has_ov_tokenizer:
            convert_tokenizer_files(info.path)
        self.context_length = info.context_length
        self._tok = ov_genai.Tokenizer(str(info.path))
        eos = int(self._tok.get_eos_token_id())
        end = find_end_token_id(self.encode, eos)
        self.stops = {eos} | ({end} if end is not None else set())

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self._tok.encode(text).input_ids.data[0]]

    def same_as(self, other: Tokens) -> bool:
        return self.encode(_PROBE) == other.encode(_PROBE) and self.stops == other.stops
