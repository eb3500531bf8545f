"""The engine contract: what the window, the CLI and the server use, local or remote.

Dolly's template, one generation at a time, cancel from any thread, progress, token counting,
the context length and what is loaded (`ModelRef`, for display and history).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from dolly_desktop.errors import DollyError
from dolly_desktop.generation.metrics import metrics_text
from dolly_desktop.generation.params import GenerationParams
from dolly_desktop.generation.prompt import build_prompt
from dolly_desktop.models.folder import Precision

TextCallback = Callable[[str], None]
REMOTE = "remote"  # the device of an engine on another machine


@dataclass(frozen=True)
class ModelRef:
    name: str
    precision: str
    folder: str

    @classmethod
    def from_folder(cls, folder: Path | str) -> ModelRef:
        """Name and precision from the folder layout: models/<name>/<PRECISION> or a Hub name
        such as dolly-v2-3b-int4-ov."""
        path = Path(folder).expanduser().resolve()
        known = [p.value for p in Precision]
        if path.name.upper() in known:
            return cls(path.parent.name, path.name.upper(), str(path))
        words = path.name.upper().replace("_", "-").split("-")
        precision = next((p for p in known if p in words), "")
        return cls(path.name, precision, str(path))


class StopReason(str, Enum):
    END = "end"  # the model said `### End` (or EOS)
    LENGTH = "length"  # max new tokens, or the context is full
    CANCELLED = "cancelled"


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    input_tokens: int
    stop_reason: StopReason
    ttft_s: float  # submit to first token
    total_s: float
    tokens_per_s: float  # decode speed: tokens after the first over the time they took
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def generated_tokens(self) -> int:
        return len(self.token_ids)

    def metrics_line(self) -> str:
        return self.metrics_text()

    def metrics_text(self, sep: str = ", ") -> str:
        return metrics_text(
            self.generated_tokens,
            self.tokens_per_s,
            self.ttft_s,
            self.stop_reason.value,
            self.input_tokens,
            sep,
        )


class EngineBase:
    """What the window, the CLI and the server use, local or remote: Dolly's template, one
    generation at a time, cancel from any thread. Subclasses implement `_run`,
    `count_tokens`, `progress` and `close`, and set the attributes below."""

    model: ModelRef  # what is loaded: a local folder or a server's model, for display/history
    # Told things the person should know that are not errors (a remote server was replaced
    # by the next one); set by whoever shows them, called from the generating thread.
    notify: TextCallback | None = None
    device: str  # an OpenVINO device, or "remote"
    load_s: float  # load plus warm-up, or a remote server's first answer
    context_length: int

    @property
    def is_remote(self) -> bool:
        return self.device == REMOTE

    def count_tokens(self, text: str) -> int:
        """Tokens `text` takes in this model's context."""
        raise NotImplementedError

    def close(self) -> None:
        """Free the model (or the connection); the engine is not used again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancel = threading.Event()

    def cancel(self) -> None:
        """Stop the running generation after the token being produced now."""
        self._cancel.set()

    def progress(self) -> tuple[int, float]:
        """Tokens generated so far and their decode rate; safe to call from any thread."""
        raise NotImplementedError

    def generate(
        self,
        instruction: str,
        params: GenerationParams | None = None,
        on_text: TextCallback | None = None,
        stop_token_ids: set[int] | None = None,
        context: str = "",
        grammar: str | None = None,
    ) -> GenerationResult:
        """Answer an instruction (with a passage to work from, if `context`) in Dolly's
        template, streaming text to `on_text`."""
        prompt = build_prompt(instruction, context)
        return self.generate_from_prompt(prompt, params, on_text, stop_token_ids, grammar)

    def generate_from_prompt(
        self,
        prompt: str,
        params: GenerationParams | None = None,
        on_text: TextCallback | None = None,
        stop_token_ids: set[int] | None = None,
        grammar: str | None = None,
    ) -> GenerationResult:
        """Continue a whole prompt. `grammar` (xgrammar's EBNF, generation/structured.py)
        constrains the answer: every token the model may choose keeps it inside the grammar."""
        params = params or GenerationParams()
        if not self._lock.acquire(blocking=False):
            raise DollyError("A response is already being generated: stop it first.")
        try:
            self._cancel.clear()
            return self._run(prompt, params, on_text, stop_token_ids, grammar)
        finally:
            self._lock.release()

    def _run(
        self,
        prompt: str,
        params: GenerationParams,
        on_text: TextCallback | None,
        stop_token_ids: set[int] | None,
        grammar: str | None,
    ) -> GenerationResult:
        raise NotImplementedError
