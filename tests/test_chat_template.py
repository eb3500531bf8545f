"""Dolly's chat template (for OpenVINO Model Server) renders exactly Dolly's prompt, with and
without a passage, under the chat rule `serve` also follows."""

from __future__ import annotations

import pytest

from dolly_desktop.generation.prompt import build_prompt
from dolly_desktop.models.chat_template import TEMPLATE, write_chat_template

sandbox = pytest.importorskip("jinja2.sandbox")  # comes with the export extra (torch)

PASSAGE = "The mill on the river Wey was rebuilt in 1874 after a fire."


def render(messages: list[dict[str, str]], trim: bool) -> str:
    # trim: as transformers renders chat templates (trim_blocks, lstrip_blocks); else Jinja's
    # defaults, as a server with its own renderer may.
    env = sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=trim, lstrip_blocks=trim, extensions=["jinja2.ext.loopcontrols"]
    )
    return env.from_string(TEMPLATE).render(messages=messages, add_generation_prompt=True)


@pytest.mark.parametrize(
    ("messages", "instruction", "passage"),
    [
        ([{"role": "user", "content": "Who is Dolly?"}], "Who is Dolly?", ""),
        (
            [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": PASSAGE},
                {"role": "user", "content": " When was the mill rebuilt?\n"},
            ],
            "When was the mill rebuilt?",
            PASSAGE,
        ),
        (
            [
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi."},
                {"role": "user", "content": "Name 3 advantages to be a cat"},
            ],
            "Name 3 advantages to be a cat",
            "",
        ),
    ],
)
def test_chat_template_renders_dollys_prompt(messages, instruction, passage):
    for trim in (True, False):
        assert render(messages, trim) == build_prompt(instruction, passage)


def test_template_is_written_into_a_folder(tmp_path):
    path = write_chat_template(tmp_path)
    assert path.name == "chat_template.jinja" and path.read_text(encoding="utf-8") == TEMPLATE


def test_every_install_carries_the_template(tmp_path, tiny_models):
    from dolly_desktop.models.store import Store

    store = Store(tmp_path / "store")
    (m,) = store.import_folder(tiny_models["INT4"], name="dolly-v2-3b", precision="INT4")
    assert (m.path / "chat_template.jinja").read_text(encoding="utf-8") == TEMPLATE
