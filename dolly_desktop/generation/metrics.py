"""The one way a run's speed is put in words: the CLI, the window, history and its exports."""

from __future__ import annotations


def metrics_text(
    tokens: int | None,
    tokens_per_s: float | None = None,
    ttft_s: float | None = None,
    stop: str | None = None,
    input_tokens: int | None = None,
    sep: str = ", ",
) -> str:
    """`12 tokens, 15.2 tok/s, first token 310 ms, prompt 30 tokens, stopped: end`; facts that
    are not known (a run still going, an interrupted one) are left out."""
    facts = []
    if tokens is not None:
        facts.append(f"{tokens} tokens")
    if tokens_per_s is not None:
        facts.append(f"{tokens_per_s:.1f} tok/s")
    if ttft_s is not None:
        facts.append(f"first token {ttft_s * 1000:.0f} ms")
    if input_tokens is not None:
        facts.append(f"prompt {input_tokens} tokens")
    if stop is not None:
        facts.append(f"stopped: {stop}")
    return sep.join(facts)
