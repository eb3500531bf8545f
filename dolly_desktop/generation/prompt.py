"""Dolly 2.0's instruction template, its end token, and cleaning of the response."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path

from dolly_desktop.errors import DollyError

log = logging.getLogger(__name__)

INSTRUCTION_KEY = "### Instruction:"
RESPONSE_KEY = "### Response:"
END_KEY = "### End"
INTRO_BLURB = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)
INPUT_KEY = "Input:"
# Exactly databricks/dolly-v2's instruct_pipeline.PROMPT_FOR_GENERATION_FORMAT.
PROMPT_FORMAT = f"{INTRO_BLURB}\n\n{INSTRUCTION_KEY}\n{{instruction}}\n\n{RESPONSE_KEY}\n"
# With a passage to work from: databrickslabs/dolly training/consts.py PROMPT_WITH_INPUT_FORMAT
# up to the response key, the format of the closed QA, summarization and extraction records.
PROMPT_WITH_INPUT_FORMAT = (
    f"{INTRO_BLURB}\n\n{INSTRUCTION_KEY}\n{{instruction}}\n\n{INPUT_KEY}\n{{input}}\n\n"
    f"{RESPONSE_KEY}\n"
)

MAX_INSTRUCTION_CHARS = 20_000
# Dolly reads 2048 tokens in all; a passage past ~4 characters a token cannot fit anyway.
MAX_CONTEXT_CHARS = 100_000
EMPTY_INSTRUCTION = "The instruction is empty: type what you want Dolly to do."


def build_prompt(instruction: str, context: str = "") -> str:
    """Wrap an instruction, and a passage to work from if any, in Dolly's template; refuse an
    empty or absurdly long one. A blank context gives exactly the prompt without one."""
    text = instruction.strip()
    if not text:
        raise DollyError(EMPTY_INSTRUCTION)
    if len(text) > MAX_INSTRUCTION_CHARS:
        raise DollyError(
            f"The instruction is {len(text)} characters long; the limit is {MAX_INSTRUCTION_CHARS}."
        )
    passage = context.strip()
    if not passage:
        return PROMPT_FORMAT.format(instruction=text)
    if len(passage) > MAX_CONTEXT_CHARS:
        raise DollyError(
            f"The context is {len(passage)} characters long; the limit is {MAX_CONTEXT_CHARS}."
        )
    return PROMPT_WITH_INPUT_FORMAT.format(instruction=text, input=passage)


def room_after(prompt_tokens: int, context_length: int) -> int:
    """How many new tokens fit after a prompt; refuses a prompt that leaves no room."""
    room = context_length - prompt_tokens
    if room < 1:
        raise DollyError(
            f"The prompt is {prompt_tokens} tokens; this model reads at most "
            f"{context_length - 1}. Shorten the instruction or the context."
        )
    return room


def read_text_file(path: str | Path, limit: int = MAX_CONTEXT_CHARS) -> str:
    """A passage from a file ("-": stdin) as UTF-8 text, or one sentence saying why not."""
    if str(path) == "-":
        data = sys.stdin.buffer.read(limit * 4 + 1)
        name = "standard input"
    else:
        p = Path(path).expanduser()
        name = p.name
        try:
            with p.open("rb") as f:
                data = f.read(limit * 4 + 1)  # UTF-8 takes at most 4 bytes a character
        except OSError as e:
            raise DollyError(f"{p} cannot be read: {e.strerror or e}.") from e
    if b"\0" in data:
        raise DollyError(f"{name} is not a text file: give a .txt or .md file in UTF-8.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DollyError(f"{name} is not UTF-8 text: save it as UTF-8 and try again.") from None
    if len(text) > limit:
        raise DollyError(f"{name} is longer than {limit} characters: use a shorter passage.")
    return text


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
