"""The stream renders as it will end: Markdown while it streams (no underscores or link
syntax that vanish at the end), the final text painted once, and paints coalesced to at most
one per frame however fast the pieces come."""

from __future__ import annotations

import time

import pytest

from dolly_desktop.generation.engine import GenerationResult, StopReason
from dolly_desktop.generation.params import GenerationParams
from dolly_desktop.ui.main_window import FRAME_MS

MS = 60_000
ANSWER = (
    "Use `snake_case` names, _this_ for emphasis and [the docs](https://example.com/a_b).\n\n"
    "- one __two__ three\n- four\n\nThe end."
)


class ScriptedEngine:
    """The loaded engine, but generate() streams a fixed text in small pieces."""

    def __init__(self, real, text: str, gap_s: float, linger_s: float = 0.0) -> None:
        self._real, self.text, self.gap_s, self.linger_s = real, text, gap_s, linger_s

    def __getattr__(self, name):
        return getattr(self._real, name)

    def generate(self, instruction, params, on_text=None, context=""):
        pieces = [self.text[i : i + 3] for i in range(0, len(self.text), 3)]
        t0 = time.perf_counter()
        for p in pieces:
            on_text(p)
            if self.gap_s:
                time.sleep(self.gap_s)
        time.sleep(self.linger_s)  # the last frame paints before the run ends
        total = time.perf_counter() - t0
        return GenerationResult(
            self.text, list(range(len(pieces))), 10, StopReason.END, 0.001, total, 1000.0
        )


@pytest.fixture
def window(tiny_window):
    return tiny_window


def watch(window, shown: list[tuple[str, str]] | None = None) -> list[str]:
    """Every render's source text (and, in `shown`, with what the reader saw after it)."""
    renders: list[str] = []
    real = window._render

    def spy(text: str) -> None:
        renders.append(text)
        real(text)
        if shown is not None:
            shown.append((text, window.response.toPlainText()))

    window._render = spy
    return renders


def answer(qtbot, window, engine) -> None:
    real, window.worker.engine = window.worker.engine, engine
    try:
        window.instruction.setPlainText("Name things.")
        window.set_params(GenerationParams(greedy=True, max_new_tokens=100))
        with qtbot.waitSignal(window.response_done, timeout=MS):
            window.submit()
    finally:
        window.worker.engine = real


def test_markdown_as_it_streams_and_nothing_changes_at_the_end(qtbot, window):
    shown: list[tuple[str, str]] = []
    renders = watch(window, shown)
    answer(qtbot, window, ScriptedEngine(window.worker.engine, ANSWER, 0.004, linger_s=0.2))
    assert len(renders) > 5  # it streamed, frame by frame
    assert all(ANSWER.startswith(r) for r in renders)
    final = window.response.toPlainText()
    assert "snake_case" in final and "_this_" not in final and "](https" not in final
    # Markdown while streaming: once a construct has closed, its syntax is not on screen.
    for source, seen in shown:
        for closed, syntax in (
            ("_this_", "_this_"),
            ("(https://example.com/a_b)", "](https"),
            ("__two__", "__two__"),
        ):
            assert closed not in source or syntax not in seen, (source, seen)
    assert any("](https" in source for source, _ in shown)  # streamed with the link in it
    # The finished answer was painted once, by the stream: no re-render when it ended.
    assert renders.count(ANSWER) == 1 and renders[-1] == ANSWER
    assert window._response_text == ANSWER


def test_paints_are_coalesced_to_one_per_frame(qtbot, window):
    text = "word " * 2000  # 3,334 pieces as fast as the engine thread can hand them over
    renders = watch(window)
    t0 = time.perf_counter()
    answer(qtbot, window, ScriptedEngine(window.worker.engine, text, 0.0, linger_s=0.05))
    elapsed_ms = (time.perf_counter() - t0) * 1000
    assert window._response_text == text
    assert len(renders) <= elapsed_ms / FRAME_MS + 2, (len(renders), elapsed_ms)


def test_the_real_model_streams_in_frames(qtbot, window, tiny_fp16):
    """On the tiny model (hundreds of tokens a second): several paints, at most one a frame,
    and the final text is the engine's."""
    renders = watch(window)
    window.instruction.setPlainText("Write a love letter to my best friend")
    window.set_params(GenerationParams(greedy=True, max_new_tokens=300))
    t0 = time.perf_counter()
    with qtbot.waitSignal(window.response_done, timeout=MS):
        window.submit()
    elapsed_ms = (time.perf_counter() - t0) * 1000
    result = window.last_result
    assert window._response_text == result.text
    assert 1 <= len(renders) <= elapsed_ms / FRAME_MS + 2
    assert len(renders) < result.generated_tokens
