"""The generation engine: load a Dolly IR folder with openvino-genai and stream responses."""

from __future__ import annotations

import logging
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
    TextCallback,
)
from dolly_desktop.generation.engines.streaming import (
    CancelAtOnce,
    TokenStreamer,
    first_line,
    generation_config,
)
from dolly_desktop.generation.lookup import (
    MISSES,
    LookupMode,
    assist,
    parse_mode,
    pays,
    pipeline_properties,
    second_pipeline_fits,
    wants_lookup,
)
from dolly_desktop.generation.memory import bound_onednn_cache, releasing_mapped_files
from dolly_desktop.generation.params import GenerationParams
from dolly_desktop.generation.prompt import (
    PROMPT_FORMAT,
    find_end_token_id,
    room_after,
)
from dolly_desktop.generation.tuning import calibration as tuning
from dolly_desktop.generation.tuning.calibration import DEFAULT_MIX, TUNED, Calibration, Mix
from dolly_desktop.generation.tuning.child import IdleCalibration
from dolly_desktop.generation.tuning.rule import (
    KERNEL_CACHE,
    cpu_capabilities,
    cpu_properties,
    weight_format,
)
from dolly_desktop.models.capacity import available_memory_bytes
from dolly_desktop.models.convert.tokenizer import convert_tokenizer_files
from dolly_desktop.models.folder import MODEL_BIN, ModelDir, inspect_model_dir

log = logging.getLogger(__name__)

# oneDNN reads its cache size once per process, at its first primitive: before any compile.
bound_onednn_cache(KERNEL_CACHE)


def cpu_defaults(model_dir: Path) -> dict[str, Any]:
    """The CPU properties for this model on this CPU by the family rule (generation/tuning/
    rule.py: chosen from what the CPU offers, dynamic quantization following how the weights
    are compressed). Applied on CPU only; other devices keep their own defaults."""
    return cpu_properties(cpu_capabilities(), weight_format(model_dir))


def calibrated(rule: dict[str, Any], cal: Calibration, mix: Mix) -> dict[str, Any]:
    """The rule's properties with the tuned ones replaced by the calibration's choice."""
    return {**{k: v for k, v in rule.items() if k not in TUNED}, **cal.properties(mix)}


# With reuse_template, prompts longer than this past the template head are prefilled whole.
REUSE_MAX_NEW_TOKENS = 64


def resolve_lookup(
    mode: LookupMode | str, model_dir: Path | str, prompt: str, device: str
) -> LookupMode:
    """`auto` for one prompt known before the model loads (the CLI): on or off as the engine's
    auto would choose for it, so that one pipeline loads, not two."""
    mode = parse_mode(mode)
    if mode is not LookupMode.AUTO:
        return mode
    if device == "NPU":
        return LookupMode.OFF
    info = inspect_model_dir(Path(model_dir))
    if not info.has_ov_tokenizer:
        convert_tokenizer_files(info.path)
    tokenizer = ov_genai.Tokenizer(str(info.path))
    count = lambda text: int(tokenizer.encode(text).input_ids.shape[1])  # noqa: E731
    head = PROMPT_FORMAT.split("{instruction}")[0]
    return LookupMode.ON if wants_lookup(count(prompt) - count(head)) else LookupMode.OFF


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
        prompt_lookup: LookupMode | str = LookupMode.OFF,
        calibrate: bool | None = None,
        mix: Mix | None = None,
    ) -> None:
        """`calibrate`, on CPU (generation/tuning/): True loads with the settings this
        machine's calibration chose for `mix` (the person's prompt and answer lengths, from
        history; None: a short question and a 256-token answer) and, if there is none yet,
        measures while idle; False keeps the built-in rule; None does as the process says
        (tuning.calibrating: use a stored calibration, measure only where the CLI asks).
        Properties the caller passes that calibration tunes turn it off."""
        super().__init__()
        self.device = check_device(device)
        # genai's NPU pipeline has no paged attention, so no prompt lookup: auto is off there.
        mode = parse_mode(prompt_lookup)
        self.prompt_lookup = LookupMode.OFF if mode is LookupMode.AUTO and device == "NPU" else mode
        self._lookup_pipe: ov_genai.LLMPipeline | None = None  # auto's, at the first long prompt
        self._lookup_refused = False
        self._lookup_misses = 0  # auto's answers in a row that copied too little to pay
        self.info: ModelDir = inspect_model_dir(Path(model_dir))
        self.model_dir = self.info.path
        self.model = ModelRef.from_folder(self.model_dir)
        if not self.info.has_ov_tokenizer:
            convert_tokenizer_files(self.model_dir)
        cache = Path(cache_dir) if cache_dir else paths.compiled_cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        props: dict[str, Any] = cpu_defaults(self.model_dir) if self.device == "CPU" else {}
        self._rule = dict(props)
        self._user = dict(properties or {})
        self.mix = mix or DEFAULT_MIX
        how = tuning.mode() if calibrate is None else "idle" if calibrate else "off"
        tunable = how != "off" and self.device == "CPU" and not set(self._user) & set(TUNED)
        # The stored calibration: what the rule said unless a calibration ran on this machine.
        self.calibration: Calibration | None = tuning.stored(self.model_dir) if tunable else None
        if self.calibration is not None:
            props = calibrated(props, self.calibration, self.mix)
        props.update(self._user)
        props["CACHE_DIR"] = str(cache)
        self._props = props
        self._cache = cache
        self._calibrator: IdleCalibration | None = None
        self._closed = False
        # Loaded with the calibrated settings while idle; the engine switches at a request.
        self._next: tuple[ov_genai.LLMPipeline, dict[str, Any], Calibration] | None = None
        # With warm_up, the mapped weight files are handed back as the runtime copies them
        # (core/memory.py): without it, RSS is about twice the weights.
        # Not a closure over self: that cycle kept a dropped engine (and its mapping of the
        # weights) alive until the next garbage collection, and MADV_PAGEOUT skips pages that
        # two mappings share, so a reload of the same model kept both copies resident.
        weights = self.model_dir / MODEL_BIN
        weight_files = lambda: [weights, *cache.glob("*.blob")]  # noqa: E731
        self._weight_files = weight_files
        with releasing_mapped_files(weight_files) if warm_up else nullcontext():
            t0 = time.perf_counter()
            self.pipe = self._load_pipeline(lookup=self.prompt_lookup is LookupMode.ON)
            self.load_s = time.perf_counter() - t0
            self.tokenizer = self.pipe.get_tokenizer()
            self.eos_id: int = int(self.tokenizer.get_eos_token_id())
            self.end_id = find_end_token_id(self.encode, self.eos_id)
            self._streamer: TokenStreamer | None = None
            # reuse_template: every Dolly prompt starts with the same 21 template tokens, kept
            # in the KV cache between answers so that a short prompt's prefill starts after
            # them. genai's chat mode keeps the cache between requests and prefills only past
            # the first token in which a prompt differs from what it holds; after each answer
            # a background thread resets it and prefills the head alone (trimming a long cache
            # back to the head measured slower than that), so an answer never depends on what
            # was asked before. For the window, where a person reads between answers: back to
            # back (serve, scripts) the next request would wait for the primer. NPU recomputes
            # whole chat histories in genai: nothing to gain there. The prompt-lookup pipeline
            # (prompt_lookup on) is genai's paged one, whose chat mode this does not rely on.
            self.reuse_template = (
                reuse_template and self.device != "NPU" and self.prompt_lookup is not LookupMode.ON
            )
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
                        f"run: {first_line(e)}"
                    ) from e
                self.warmup_s = time.perf_counter() - t1
        log.info(
            "loaded %s on %s in %.2f s, warmed up in %.2f s; prompt lookup %s; CPU settings %s",
            self.model_dir, self.device, self.load_s, self.warmup_s, self.prompt_lookup.value,
            self.tuning,
        )  # fmt: skip
        if tunable and how == "idle" and self.calibration is None:
            self._calibrator = IdleCalibration(
                self.model_dir, self.mix, self._calibrated, cache_dir=self._cache
            )
            self._calibrator.idle()

    @property
    def properties(self) -> dict[str, Any]:
        """The properties the pipeline was loaded with (CACHE_DIR included)."""
        return dict(self._props)

    @property
    def tuning(self) -> str:
        """Where the CPU settings come from, for the log and the person."""
        if self.device != "CPU":
            return "the device's own"
        if self.calibration is None:
            return "by the built-in rule"
        return f"calibrated: {self.calibration.choice(self.mix)}"

    def _calibrated(self, cal: Calibration) -> None:
        """A calibration finished (on its thread, while idle): load the chosen settings now
        if a second copy of the weights fits beside the pipeline, to switch at the next
        request; else they apply from the next load."""
        props = {**calibrated(self._rule, cal, self.mix), **self._user}
        props["CACHE_DIR"] = str(self._cache)
        if props == self._props:
            self.calibration = cal  # the rule's choice won: nothing to switch
            return
        weights = (self.model_dir / MODEL_BIN).stat().st_size
        if not second_pipeline_fits(weights, available_memory_bytes()):
            log.info("calibration chose %s: it applies from the next load", cal.choice(self.mix))
            return
        try:
            with releasing_mapped_files(self._weight_files):
                pipe = ov_genai.LLMPipeline(str(self.model_dir), self.device, **props)
                cfg = pipe.get_generation_config()
                cfg.max_new_tokens, cfg.do_sample, cfg.ignore_eos = 1, False, True
                pipe.generate(ov.Tensor(np.array([self._template_head], dtype=np.int64)), cfg)
        except RuntimeError as e:  # the engine keeps its settings
            log.warning("the calibrated settings did not load: %s", first_line(e))
            return
        if not self._closed:  # else it goes with this frame
            self._next = (pipe, props, cal)

    def _switch(self) -> None:
        """At a request, before it runs: the pipeline with the calibrated settings, if one
        is ready."""
        ready, self._next = self._next, None
        if ready is None:
            return
        if self._primer is not None:
            self._primer.join()
        self.pipe, self._props, self.calibration = ready
        self._primed = False  # the template head was cached in the old pipeline
        log.info("switched to the calibrated CPU settings: %s", self.tuning)

    def _load_pipeline(self, lookup: bool) -> ov_genai.LLMPipeline:
        """The plain pipeline (SDPA on CPU) or the prompt-lookup one (genai's paged one)."""
        props = pipeline_properties(self._props) if lookup else self._props
        try:
            return ov_genai.LLMPipeline(str(self.model_dir), self.device, **props)
        except RuntimeError as e:
            how = " with prompt lookup" if lookup else ""
            raise DollyError(
                f"The model in {self.model_dir} could not be loaded{how} on {self.device}: "
                f"{first_line(e)}"
            ) from e

    def _pipe_for(self, new_tokens: int) -> tuple[ov_genai.LLMPipeline, bool]:
        """The pipeline for a prompt with `new_tokens` past the template head, and whether it
        looks up candidates in the prompt."""
        if self.prompt_lookup is LookupMode.ON:
            return self.pipe, True
        if self.prompt_lookup is LookupMode.AUTO and wants_lookup(new_tokens):
            pipe = self._second_pipeline()
            if pipe is not None:
                return pipe, True
        return self.pipe, False

    def _second_pipeline(self) -> ov_genai.LLMPipeline | None:
        """auto: the prompt-lookup pipeline beside the plain one, loaded (and warmed up) at the
        first prompt that wants it, if a second copy of the weights fits in memory; None (the
        plain pipeline answers) if it does not or cannot load."""
        if self._lookup_pipe is not None or self._lookup_refused:
            return self._lookup_pipe
        weights = (self.model_dir / MODEL_BIN).stat().st_size
        free = available_memory_bytes()
        if not second_pipeline_fits(weights, free):
            self._lookup_refused = True
            log.info(
                "prompt lookup off for %s: a second copy of its %d MB of weights does not fit "
                "(%s MB free)",
                self.model_dir, weights >> 20, "?" if free is None else free >> 20,
            )  # fmt: skip
            return None
        if self.notify is not None:  # seconds for 3b: the window says why the answer waits
            self.notify("Loading prompt lookup for long prompts (once per model)…")
        t0 = time.perf_counter()
        try:
            with releasing_mapped_files(self._weight_files):
                pipe = self._load_pipeline(lookup=True)
                cfg = assist(pipe.get_generation_config())
                cfg.max_new_tokens, cfg.do_sample, cfg.ignore_eos = 1, False, True
                pipe.generate(ov.Tensor(np.array([self._template_head], dtype=np.int64)), cfg)
        except (DollyError, RuntimeError) as e:
            self._lookup_refused = True
            log.warning("prompt lookup off: its pipeline did not load: %s", e)
            return None
        self._lookup_pipe = pipe
        log.info("prompt-lookup pipeline loaded and warmed up in %.2f s", time.perf_counter() - t0)
        return pipe

    @property
    def context_length(self) -> int:
        return self.info.context_length

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def close(self) -> None:
        self._closed = True
        if self._calibrator is not None:
            self._calibrator.close()
        self._next = None
        if self._primer is not None:
            self._primer.join()  # an inference must not outlive its pipeline
        self._lookup_pipe = None
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
        grammar: str | None,
    ) -> GenerationResult:
        if self._calibrator is not None:
            self._calibrator.busy()  # killed at once: the answer has the cores to itself
        try:
            return self._answer(prompt, params, on_text, extra_stops, grammar)
        finally:
            if self._calibrator is not None:
                self._calibrator.idle()

    def _answer(
        self,
        prompt: str,
        params: GenerationParams,
        on_text: TextCallback | None,
        extra_stops: set[int] | None,
        grammar: str | None,
    ) -> GenerationResult:
        self._switch()
        t0 = time.perf_counter()
        inputs = self.tokenizer.encode(prompt)
        n_in = int(inputs.input_ids.shape[1])
        room = room_after(n_in, self.context_length)
        stops = {self.eos_id} | ({self.end_id} if self.end_id is not None else set())
        stops |= extra_stops or set()
        max_new = min(params.max_new_tokens, room)
        ids = [int(i) for i in inputs.input_ids.data[0]]
        head = self._template_head
        if self._primer is not None:
            self._primer.join()  # the head is being computed after the last answer: wait
        pipe, lookup = self._pipe_for(len(ids) - len(head))
        cfg = generation_config(pipe.get_generation_config(), params, max_new, grammar, lookup)
        streamer = self._streamer = TokenStreamer(
            self.tokenizer, on_text, self._cancel, stops, max_new
        )
        # A long prompt gains little from 21 tokens, and prefilled after a cached head it
        # measured slower than whole (docs/benchmarks.md, "Dolly's template, prefilled once").
        templated = ids[: len(head)] == head and 0 < len(ids) - len(head) <= REUSE_MAX_NEW_TOKENS
        # The cached head is the plain pipeline's: auto's prompt-lookup one leaves it be.
        reusing = self.reuse_template and pipe is self.pipe
        if reusing and templated and not self._primed:
            self._prime_quietly()  # an answer must not depend on whether the head was cached
        with self._pipe_lock:
            if reusing:
                reuse = self._primed and templated
                self._primed = False
                if not reuse:
                    self._reset_kv()
            try:
                results = pipe.generate(inputs, cfg, streamer)
            except RuntimeError as e:
                raise DollyError(f"Generation failed on {self.device}: {first_line(e)}") from e
            finally:
                streamer.end()
                self._streamer = None
        if reusing:  # while the person reads the answer
            # Not a daemon: the interpreter must not tear down under a running inference.
            self._primer = threading.Thread(target=self._prime_quietly, name="template-primer")
            self._primer.start()
        extra = {
            "prefilled_tokens": int(results.perf_metrics.get_num_input_tokens()),
            # genai's own count, not the streamer's: how late a cancel was honoured shows
            # here even if the streamer dropped tokens (tests/test_engine.py).
            "generated_tokens": int(results.perf_metrics.get_num_generated_tokens()),
            # With prompt lookup one inference may give several tokens: fewer inferences than
            # tokens is the candidates accepted (tests/test_prompt_lookup.py).
            "prompt_lookup": lookup,
            "inferences": len(results.perf_metrics.raw_metrics.token_infer_durations),
        }
        if lookup and pipe is self._lookup_pipe:
            self._judge_lookup(extra["generated_tokens"], extra["inferences"])
        return streamer.result(self.tokenizer, self._cancel.is_set(), n_in, t0, extra)

    def _judge_lookup(self, tokens: int, inferences: int) -> None:
        """auto: free the prompt-lookup pipeline after answers that copied too little to pay."""
        verdict = pays(tokens, inferences)
        if verdict is None:
            return
        self._lookup_misses = 0 if verdict else self._lookup_misses + 1
        if self._lookup_misses >= MISSES:
            self._lookup_pipe = None
            self._lookup_refused = True
            log.info(
                "prompt lookup off: %d answers in a row copied too little from their prompts "
                "(the last %d tokens in %d inferences)",
                self._lookup_misses, tokens, inferences,
            )  # fmt: skip

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
        if self.prompt_lookup is LookupMode.ON:
            assist(cfg)  # that pipeline wants its candidate settings on every request
        cfg.max_new_tokens, cfg.do_sample, cfg.ignore_eos = 1, False, True
        ids = ov.Tensor(np.array([self._template_head], dtype=np.int64))
        with self._pipe_lock:
            if self.reuse_template:
                self._reset_kv()
                self.pipe.generate(ids, cfg, CancelAtOnce())
                self._primed = True
            else:
                self.pipe.generate(ids, cfg)

    def _prime_quietly(self) -> None:
        try:
            self._prime()
        except RuntimeError as e:  # the next prompt is prefilled whole instead
            log.warning("priming the template head failed: %s", first_line(e))
