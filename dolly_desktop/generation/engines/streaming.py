"""What both openvino-genai engines share (the one-stream window engine in local.py and the
batching server engine in batching.py): the streamer that carries stop tokens and cancel and
records token times, the generation config made from GenerationParams, the result, and
OpenVINO's error text cut to one line."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import openvino_genai as ov_genai

from dolly_desktop.generation.engine import GenerationResult, StopReason, TextCallback
from dolly_desktop.generation.lookup import assist
from dolly_desktop.generation.params import GenerationParams
from dolly_desktop.generation.prompt import clean_response


class TokenStreamer(ov_genai.StreamerBase):
    """Records token ids and times, hands text to the callback, and carries the cancel flag.

    openvino-genai may call this from its own thread. Stop tokens are kept out of the text.
    """

    def __init__(
        self,
        tokenizer: ov_genai.Tokenizer,
        on_text: TextCallback | None,
        cancel: threading.Event,
        stop_ids: set[int],
        max_new: int,
    ) -> None:
        super().__init__()
        self.tokens: list[int] = []
        self.max_new = max_new
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.cancel = cancel
        self.stop_ids = stop_ids
        self.hit_stop = False
        self.on_text = on_text
        self._text = ov_genai.TextStreamer(tokenizer, self._piece) if on_text else None

    def _piece(self, piece: str) -> ov_genai.StreamingStatus:
        self.on_text(piece)  # type: ignore[misc]
        return ov_genai.StreamingStatus.RUNNING

    def write(self, token: int | list[int]) -> ov_genai.StreamingStatus:
        now = time.perf_counter()
        if self.first_at is None:
            self.first_at = now
        self.last_at = now
        # Every ending is a CANCEL, even a stop token or the last allowed token: in chat mode
        # genai then keeps the KV cache but drops the turn from its history, so the next prompt
        # reuses only what it shares with this one (see Engine._run).
        for t in [token] if isinstance(token, int) else token:
            if t in self.stop_ids:
                self.hit_stop = True
                return ov_genai.StreamingStatus.CANCEL
            self.tokens.append(t)
            if self._text is not None:
                self._text.write(t)
        if self.cancel.is_set() or len(self.tokens) >= self.max_new:
            return ov_genai.StreamingStatus.CANCEL
        return ov_genai.StreamingStatus.RUNNING

    def rate(self) -> float:
        """Decode speed: tokens after the first over the time they took."""
        n = len(self.tokens)
        if n < 2 or self.first_at is None or self.last_at is None:
            return 0.0
        dt = self.last_at - self.first_at
        return (n - 1) / dt if dt > 0 else 0.0

    def result(
        self,
        tokenizer: ov_genai.Tokenizer,
        cancelled: bool,
        input_tokens: int,
        t0: float,
        extra: dict[str, Any],
    ) -> GenerationResult:
        """What this generation came to, and why it stopped; `t0` is when it was asked for."""
        t_end = time.perf_counter()
        if self.hit_stop:
            reason = StopReason.END
        elif cancelled:
            reason = StopReason.CANCELLED
        else:
            reason = StopReason.LENGTH
        return GenerationResult(
            text=clean_response(tokenizer.decode(self.tokens)),
            token_ids=self.tokens,
            input_tokens=input_tokens,
            stop_reason=reason,
            ttft_s=(self.first_at or t_end) - t0,
            total_s=t_end - t0,
            tokens_per_s=self.rate(),
            extra=extra,
        )

    def end(self) -> None:  # genai may call it more than once
        if self._text is not None:
            self._text.end()
            self._text = None


class CancelAtOnce(ov_genai.StreamerBase):
    """Ends a generation in CANCEL at its first token (a text callback might never be called
    for one token, and the generation would end FINISHED, kept in the chat history)."""

    def write(self, token: int | list[int]) -> ov_genai.StreamingStatus:
        return ov_genai.StreamingStatus.CANCEL

    def end(self) -> None:
        pass


def generation_config(
    base: ov_genai.GenerationConfig,
    params: GenerationParams,
    max_new: int,
    grammar: str | None = None,
    prompt_lookup: bool = False,
) -> ov_genai.GenerationConfig:
    """The sampling settings of `params` on a pipeline's own base config, constrained to
    `grammar` (EBNF) if given, with prompt lookup's candidate settings if asked
    (generation/lookup.py)."""
    cfg = assist(base) if prompt_lookup else base
    cfg.max_new_tokens = max_new
    if grammar is not None:
        cfg.structured_output_config = ov_genai.StructuredOutputConfig(grammar=grammar)
    # Stop tokens are handled by the streamer, so that their text never reaches the
    # response and the reason for stopping is known exactly.
    cfg.stop_token_ids = set()
    cfg.ignore_eos = True
    cfg.repetition_penalty = params.repetition_penalty
    cfg.do_sample = not params.greedy
    if not params.greedy:
        cfg.temperature = params.temperature
        cfg.top_p = params.top_p
        cfg.top_k = params.top_k  # 0 = off in openvino-genai as in the notebook
        cfg.rng_seed = params.seed if params.seed is not None else random.getrandbits(31)
    return cfg


def first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    # OpenVINO's messages start with a source location; the useful sentence is near the end.
    useful = [ln for ln in lines if not ln.startswith(("Exception from", "Check '"))]
    return (useful or lines or [type(e).__name__])[-1][:300]
