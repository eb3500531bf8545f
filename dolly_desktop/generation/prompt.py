"""Dolly 2.0's instruction template, its end token, and cleaning of the response."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from dolly_desktop.errors import DollyError

log = logging.getLogger(__name__)

INSTRUCTION_KEY = "### Instruction:"
RESPONSE_KEY = "### Response:"
END_KEY = "### End"
INTRO_BLURB = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)
# Exactly databricks/dolly-v2's instruct_pipeline.PROMPT_FOR_GENERATION_FORMAT.
PROMPT_FORMAT = f"{INTRO_BLURB}\n\n{INSTRUCTION_KEY}\n{{instruction}}\n\n{RESPONSE_KEY}\n"

MAX_INSTRUCTION_CHARS = 20_000
EMPTY_INSTRUCTION = "The instruction is empty: type what you want Dolly to do."


def build_prompt(instruction: str) -> str:
    """Wrap an instruction in Dolly's template; refuse an empty or absurdly long one."""
    text = instruction.strip()
    if not text:
        raise DollyError(EMPTY_INSTRUCTION)
    if len(text) > MAX_INSTRUCTION_CHARS:
        raise DollyError(
            f"The instruction is {len(text)} characters long; the limit is {MAX_INSTRUCTION_CHARS}."
        )
    return PROMPT_FORMAT.format(instruction=text)


def find_end_token_id(encode: Callable[[str], list[int]], eos_token_id: int | None) -> int | None:
    """The id of `### End` when the tokenizer has it as one token, else EOS (logged)."""
    ids = encode(END_KEY)
    if len(ids) == 1:
        return ids[0]
    log.warning("tokenizer has no single '%s' token; generation stops at EOS only", END_KEY)
    return eos_token_id


_TEMPLATE_TAIL = re.compile(
    r"\s*(?:" + "|".join(re.escape(k) for k in (END_KEY, INSTRUCTION_KEY, RESPONSE_KEY)) + r").*\Z",
    re.DOTALL,
)
_SPECIAL_TEXT = re.compile(r"<\|endoftext\|>|<\|padding\|>")


def clean_response(text: str) -> str:
    """Drop special-token text and anything from a template key on, as Dolly's pipeline does."""
    text = _SPECIAL_TEXT.sub("", text)
    text = _TEMPLATE_TAIL.sub("", text)
    return text.strip()
