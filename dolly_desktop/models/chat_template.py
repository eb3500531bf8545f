"""Dolly's prompt as a Hugging Face chat template (`chat_template.jinja` in every installed
model folder), so that servers which format chats themselves (OpenVINO Model Server's
`/v3/chat/completions`) build exactly the prompt Dolly was trained on.

The chat rule, the same as `dolly-desktop serve`'s: the last user message is the instruction;
a user message right before it (two user messages in a row) is the passage, given in Dolly's
`Input:` format. System messages and earlier turns are left out: Dolly is single-turn.
"""

from __future__ import annotations

from pathlib import Path

FILE_NAME = "chat_template.jinja"
# Rendered, it equals generation.prompt.build_prompt(instruction, passage) (tests check it).
# The last newline is written as an expression: Jinja drops a template's trailing newline.
TEMPLATE = """\
{%- set ns = namespace(instruction='', passage='') -%}
{%- for m in messages -%}
  {%- if m['role'] == 'user' -%}
    {%- if loop.previtem is defined and loop.previtem['role'] == 'user' -%}
      {%- set ns.passage = loop.previtem['content'] -%}
    {%- else -%}
      {%- set ns.passage = '' -%}
    {%- endif -%}
    {%- set ns.instruction = m['content'] -%}
  {%- endif -%}
{%- endfor -%}
Below is an instruction that describes a task. Write a response that appropriately completes \
the request.

### Instruction:
{{ ns.instruction | trim }}

{% if ns.passage | trim %}Input:
{{ ns.passage | trim }}

{% endif %}### Response:{{ '\n' }}"""


def write_chat_template(folder: Path) -> Path:
    """Put Dolly's chat template in a model folder being installed (a staging folder: the
    install itself is what is atomic). An existing template is replaced."""
    path = Path(folder) / FILE_NAME
    path.write_text(TEMPLATE, encoding="utf-8")
    return path
