"""The generation engine: load a Dolly IR folder with openvino-genai and stream responses."""

from __future__ import annotations

import logging
import random
import threading
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import openvino_genai as ov_genai

from dolly_desktop import paths
from dolly_desktop.errors import DollyError
from dolly_desktop.generation.devices import check_device
from dolly_desktop.generation.engine import (
    EngineBase,
    GenerationResult,
    ModelRef,
    StopReason,
    TextCallback,
)
from dolly_desktop.generation.memory import bound_onednn_cache, releasing_mapped_files
from dolly_desktop.generation.params import GenerationParams
from dolly_desktop.generation.prompt import (
    PROMPT_FORMAT,
    clean_response,
    find_end_token_id,
)
from dolly_desktop.models.convert.tokenizer import convert_tokenizer_files
from dolly_desktop.models.folder import MODEL_BIN, ModelDir, inspect_model_dir

log = logging.getLogger(__name__)

# Measured with bench/cpu_settings.py on the 3b shape at INT4 (docs/benchmarks.md, "CPU
# settings"). The stateful SDPA pipeline loads in 1.0 s against 3.7 s for genai's default
# paged-attention one (which only pays off when batching requests) and decodes as fast or
# faster. OpenVINO's own u8 KV cache and dynamic-quantization group 32 measured best, so they
# stay. Applied on CPU only; other devices keep their own defaults.
# KERNEL_CACHE bounds the CPU plugin's per-shape kernel caches: at OpenVINO's defaults (5000
# executors, 1024 oneDNN primitives) every new prompt length kept about 1.4 MB for good on the
# tiny model (docs/benchmarks.md, "Memory across prompt lengths"); bounded, growth stops
# within the first 100 lengths. The layers are alike, so one inference needs few distinct
# kernels: 16 measured slower decode on a 32-layer model, 32 did not. Same answers.
KERNEL_CACHE = 32
CPU_DEFAULTS: dict[str, Any] = {
    "ATTENTION_BACKEND": "SDPA",
    "CPU_RUNTIME_CACHE_CAPACITY": KERNEL_CACHE,
}
# oneDNN reads its cache size once per process, at its first primitive: before any compile.
bound_onednn_cache(KERNEL_CACHE)

# With reuse_template, prompts longer than this past the template head are prefilled whole.
REUSE_MAX_NEW_TOKENS = 64


class _Streamer(ov_genai.StreamerBase):
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

    def end(self) -> None:  # genai may call it more than once
        if self._text is not None:
            self._text.end()
            self._text = None


class _CancelAtOnce(ov_genai.StreamerBase):
    """Ends a generation in CANCEL at its first token (a text callback might never be called
    for one token, and the generation would end FINISHED, kept in the chat history)."""

    def write(self, token: int | list[int]) -> ov_genai.StreamingStatus:
        return ov_genai.StreamingStatus.CANCEL

    def end(self) -> None:
        pass


class Engine(EngineBase):
    """One loaded model on one device, with openvino-genai."""

    def __init__(
        self,
        model_dir: Path | str,
        device: str = "CPU",
        cache_dir: Path | None = None,
        properties: dict[str, Any] | None = None,
        warm_up: bool = True,
        reuse_template: bool = False,
    ) -> None:
        super().__init__()
        self.device = check_device(device)
        self.info: ModelDir = inspect_model_dir(Path(model_dir))
        self.model_dir = self.info.path
        self.model = ModelRef.from_folder(self.model_dir)
        if not self.info.has_ov_tokenizer:
            convert_tokenizer_files(self.model_dir)
        cache = Path(cache_dir) if cache_dir else paths.compiled_cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        props: dict[str, Any] = dict(CPU_DEFAULTS) if self.device == "CPU" else {}
        props.update(properties or {})
        props["CACHE_DIR"] = str(cache)
        # With warm_up, the mapped weight files are handed back as the runtime copies them
        # (core/memory.py): without it, RSS is about twice the weights.
        weight_files = lambda: [self.model_dir / MODEL_BIN, *cache.glob("*.blob")]  # noqa: E731
        with releasing_mapped_files(weight_files) if warm_up else nullcontext():
            t0 = time.perf_counter()
            try:
                self.pipe = ov_genai.LLMPipeline(str(self.model_dir), self.device, **props)
            except RuntimeError as e:
                raise DollyError(
                    f"The model in {self.model_dir} could not be loaded on {self.device}: "
                    f"{_first_line(e)}"
                ) from e
            self.load_s = time.perf_counter() - t0
            self.tokenizer = self.pipe.get_tokenizer()
            self.eos_id: int = int(self.tokenizer.get_eos_token_id())
            self.end_id = find_end_token_id(self.encode, self.eos_id)
            self._streamer: _Streamer | None = None
            # reuse_template: every Dolly prompt starts with the same 21 template tokens, kept
            # in the KV cache between answers so that a short prompt's prefill starts after
            # them. genai's chat mode keeps the cache between requests and prefills only past
            # the first token in which a prompt differs from what it holds; after each answer
            # a background thread resets it and prefills the head alone (trimming a long cache
            # back to the head measured slower than that), so an answer never depends on what
            # was asked before. For the window, where a person reads between answers: back to
            # back (serve, scripts) the next request would wait for the primer. NPU recomputes
            # whole chat histories in genai: nothing to gain there.
            self.reuse_template = reuse_template and self.device != "NPU"
            self._template_head = self.encode(PROMPT_FORMAT.split("{instruction}")[0])
            self._pipe_lock = threading.Lock()  # generate and the primer take turns on the pipe
            self._primed = False
            self._primer: threading.Thread | None = None
            self.warmup_s = 0.0
            if warm_up:
                # The CPU plugin repacks weights on the first inference (seconds for 3b): do
                # it now, behind the window's loading indicator, not in the first answer.
                t1 = time.perf_counter()
                try:
                    self._prime()
                except RuntimeError as e:
                    raise DollyError(
                        f"The model in {self.model_dir} loaded on {self.device} but could not "
                        f"run: {_first_line(e)}"
                    ) from e
                self.warmup_s = time.perf_counter() - t1
        log.info(
            "loaded %s on %s in %.2f s, warmed up in %.2f s",
            self.model_dir, self.device, self.load_s, self.warmup_s,
        )  # fmt: skip

    @property
    def context_length(self) -> int:
        return self.info.context_length

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def close(self) -> None:
        if self._primer is not None:
            self._primer.join()  # an inference must not outlive its pipeline
        del self.pipe

    def encode(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text).input_ids.data
        return [int(i) for i in ids[0]]

    def progress(self) -> tuple[int, float]:
        """Tokens generated so far and their decode rate; safe to call from any thread."""
        s = self._streamer
        return (len(s.tokens), s.rate()) if s is not None else (0, 0.0)

    def _run(
        self,
        prompt: str,
        params: GenerationParams,
        on_text: TextCallback | None,
        extra_stops: set[int] | None,
    ) -> GenerationResult:
        t0 = time.perf_counter()
        inputs = self.tokenizer.encode(prompt)
        n_in = int(inputs.input_ids.shape[1])
        room = self.context_length - n_in
        if room < 1:
            raise DollyError(
                f"The prompt is {n_in} tokens; this model reads at most {self.context_length - 1}. "
                "Shorten the instruction."
            )
        stops = {self.eos_id} | ({self.end_id} if self.end_id is not None else set())
        stops |= extra_stops or set()
        max_new = min(params.max_new_tokens, room)
        cfg = self._config(params, max_new)
        streamer = self._streamer = _Streamer(self.tokenizer, on_text, self._cancel, stops, max_new)
        ids = [int(i) for i in inputs.input_ids.data[0]]
        head = self._template_head
        # A long prompt gains little from 21 tokens, and prefilled after a cached head it
        # measured slower than whole (docs/benchmarks.md, "Dolly's template, prefilled once").
        templated = ids[: len(head)] == head and 0 < len(ids) - len(head) <= REUSE_MAX_NEW_TOKENS
        if self._primer is not None:
            self._primer.join()  # the head is being computed after the last answer: wait
        if self.reuse_template and templated and not self._primed:
            self._prime_quietly()  # an answer must not depend on whether the head was cached
        with self._pipe_lock:
            reuse = self._primed and templated
            self._primed = False
            if self.reuse_template and not reuse:
                self._reset_kv()
            try:
                results = self.pipe.generate(inputs, cfg, streamer)
            except RuntimeError as e:
                raise DollyError(f"Generation failed on {self.device}: {_first_line(e)}") from e
            finally:
                streamer.end()
                self._streamer = None
        if self.reuse_template:  # while the person reads the answer
            # Not a daemon: the interpreter must not tear down under a running inference.
            self._primer = threading.Thread(target=self._prime_quietly, name="template-primer")
            self._primer.start()
        t_end = time.perf_counter()
        tokens = streamer.tokens
        if streamer.hit_stop:
            reason = StopReason.END
        elif self._cancel.is_set():
            reason = StopReason.CANCELLED
        else:
            reason = StopReason.LENGTH
        first = streamer.first_at or t_end
        return GenerationResult(
            text=clean_response(self.tokenizer.decode(tokens)),
            token_ids=tokens,
            input_tokens=n_in,
            stop_reason=reason,
            ttft_s=first - t0,
            total_s=t_end - t0,
            tokens_per_s=streamer.rate(),
            extra={
                "prefilled_tokens": int(results.perf_metrics.get_num_input_tokens()),
                # genai's own count, not the streamer's: how late a cancel was honoured
                # shows here even if the streamer dropped tokens (tests/test_engine.py).
                "generated_tokens": int(results.perf_metrics.get_num_generated_tokens()),
            },
        )

    def _reset_kv(self) -> None:
        """An empty KV cache and chat history: the next prompt is prefilled whole."""
        # Deprecated in favour of ChatHistory, which cannot keep a cache across unrelated
        # requests; pyproject caps openvino-genai below the release that removes it.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self.pipe.finish_chat()
            self.pipe.start_chat()

    def _prime(self) -> None:
        """Leave exactly the template head in the KV cache (or, without reuse, just run one
        inference). The one-token answer ends in CANCEL, which drops it from genai's chat
        history but keeps the cache."""
        cfg = self.pipe.get_generation_config()
        cfg.max_new_tokens, cfg.do_sample, cfg.ignore_eos = 1, False, True
        ids = ov.Tensor(np.array([self._template_head], dtype=np.int64))
        with self._pipe_lock:
            if self.reuse_template:
                self._reset_kv()
                self.pipe.generate(ids, cfg, _CancelAtOnce())
                self._primed = True
            else:
                self.pipe.generate(ids, cfg)

    def _prime_quietly(self) -> None:
        try:
            self._prime()
        except RuntimeError as e:  # the next prompt is prefilled whole instead
            log.warning("priming the template head failed: %s", _first_line(e))

    def _config(self, params: GenerationParams, max_new: int) -> ov_genai.GenerationConfig:
        cfg = self.pipe.get_generation_config()
        cfg.max_new_tokens = max_new
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


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    # OpenVINO's messages start with a source location; the useful sentence is near the end.
    useful = [ln for ln in lines if not ln.startswith(("Exception from", "Check '"))]
    return (useful or lines or [type(e).__name__])[-1][:300]
