"""Prompt-lookup decoding: the model's next tokens guessed from the prompt, checked in one step.

When an answer copies from the prompt (a passage quoted, a name, a list repeated), the last few
generated tokens often occur in the prompt already; the tokens that followed them there are
proposed as the next ones, and one inference checks them all. Greedy answers are token for
token the same as without it (exact f32 arithmetic, tests/test_prompt_lookup.py): only the
number of inferences changes. openvino-genai gives it only on its paged-attention
(continuous-batching) pipeline, which cannot also have the SDPA backend the window's engine
loads (generation/engines/local.py), and that pipeline then wants every request to use it.

`off`, `on`, `auto`: `on` loads the prompt-lookup pipeline instead of the plain one; `auto`
keeps the plain one for short prompts (those that reuse Dolly's cached template head) and
answers long prompts, the ones with a passage to copy from, with prompt lookup: a second
pipeline, loaded at the first such prompt if a second copy of the weights fits in memory, and
freed again when answers copy too little for it to pay (`pays`). Measured at the 3b shape in
INT4 on a 2-core Zen 4 (2026-11-29, both pipelines in one process, taken in turn): the
prompt-lookup pipeline loads 3.5 times slower (5.0 against 1.4 s from the compiled cache);
decodes at 0.6x when nothing is accepted (4.1 against 6.6 tok/s; genai's paged pipeline
without lookup decodes at par, 6.6), since candidates are found for common tokens and checked
in vain; and only breaks even at 32 tokens in 18 inferences (7.3 against 6.9 tok/s). Its
prefill is at par. Beside the plain pipeline it holds a second copy of the weights (+1.8 GB
for 3b). So the app's default is off: on or auto for a person who mostly quotes passages.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import openvino_genai as ov_genai

from dolly_desktop.errors import DollyError

# openvino-genai's own sample values: up to 5 tokens proposed a step, found by matching the
# last 3 (or fewer) tokens against the prompt and the answer so far.
NUM_ASSISTANT_TOKENS = 5
MAX_NGRAM_SIZE = 3
# auto: prompts longer than this past Dolly's template head are answered with prompt lookup;
# the same limit as the plain engine's template reuse (local.REUSE_MAX_NEW_TOKENS), so no
# prompt that would reuse the cached head loses it.
LOOKUP_MIN_NEW_TOKENS = 64
# auto loads the prompt-lookup pipeline beside the plain one (a second copy of the weights)
# only when free memory holds this many times the weights file: the copy itself, its repacking
# and its KV cache, and room left for the rest of the machine.
MEMORY_FACTOR = 2.0


# auto keeps its prompt-lookup pipeline while answers copy enough for it to pay. On a 2-core
# Zen 4 at the 3b shape in INT4 an inference checking 5 candidates costs about two plain ones
# (the extra tokens are compute, not free as where decoding waits on memory): the answer is
# faster only past about 2 tokens an inference. MISSES answers in a row below that, each at least
# JUDGE_MIN_TOKENS long, and auto frees the pipeline and answers plain for the rest of the load.
BREAK_EVEN_TOKENS_PER_INFERENCE = 2.0
MISSES = 2
JUDGE_MIN_TOKENS = 16


class LookupMode(str, Enum):
    OFF = "off"
    ON = "on"
    AUTO = "auto"


LABELS = {
    LookupMode.OFF: "Off",
    LookupMode.AUTO: "Auto (prompts with a passage, while it gains)",
    LookupMode.ON: "On (every prompt)",
}


def parse_mode(value: LookupMode | str) -> LookupMode:
    """`off`, `on` or `auto` (any case), or one sentence saying what is allowed."""
    try:
        return LookupMode(str(value.value if isinstance(value, LookupMode) else value).lower())
    except ValueError:
        allowed = ", ".join(m.value for m in LookupMode)
        raise DollyError(f"Prompt lookup is one of {allowed}; got {value!r}.") from None


def pipeline_properties(props: dict[str, Any]) -> dict[str, Any]:
    """The plain pipeline's properties for the prompt-lookup one: paged attention, which
    genai requires for it, in place of the SDPA backend."""
    out = {k: v for k, v in props.items() if k != "ATTENTION_BACKEND"}
    out["prompt_lookup"] = True
    return out


def assist(cfg: ov_genai.GenerationConfig) -> ov_genai.GenerationConfig:
    """The candidate settings a prompt-lookup pipeline wants on every request."""
    cfg.num_assistant_tokens = NUM_ASSISTANT_TOKENS
    cfg.max_ngram_size = MAX_NGRAM_SIZE
    return cfg


def wants_lookup(new_tokens: int) -> bool:
    """auto: a prompt with this many tokens past the template head has enough to copy from."""
    return new_tokens > LOOKUP_MIN_NEW_TOKENS


def pays(tokens: int, inferences: int) -> bool | None:
    """Whether an answer of `tokens` in `inferences` was worth prompt lookup; None for one too
    short to tell."""
    if tokens < JUDGE_MIN_TOKENS or inferences < 1:
        return None
    return tokens >= BREAK_EVEN_TOKENS_PER_INFERENCE * inferences


def second_pipeline_fits(weights_bytes: int, free_bytes: int | None) -> bool:
    """Whether auto may load the prompt-lookup pipeline beside the plain one."""
    return free_bytes is not None and free_bytes >= MEMORY_FACTOR * weights_bytes
