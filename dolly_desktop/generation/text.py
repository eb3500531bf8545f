"""Dolly's streamed text made clean as it grows: the one place that decides where an answer
ends in a stream (template keys, special-token text, stop strings). The server and the remote
engine share it."""

from __future__ import annotations

from collections.abc import Iterable

from dolly_desktop.generation.prompt import END_KEY, INSTRUCTION_KEY, RESPONSE_KEY, clean_response

TEMPLATE_KEYS = (END_KEY, INSTRUCTION_KEY, RESPONSE_KEY)
_SPECIAL_TEXTS = ("<|endoftext|>", "<|padding|>")  # clean_response drops these anywhere


class StreamText:
    """Streamed pieces in, clean text out as it grows: together the pieces are exactly
    clean_response() of the whole, cut before the first stop string.

    Text that could still become a template key, a special token's text or a stop string is
    held back until it is known, and so is trailing whitespace. `stopped` turns true at a stop
    string or a template key: what follows is not part of the answer, so generation can end.
    """

    def __init__(self, stops: Iterable[str] = ()) -> None:
        self.stops = [s for s in stops if s]
        self._watch = (*TEMPLATE_KEYS, *_SPECIAL_TEXTS, *self.stops)
        self._raw = ""
        self._sent = 0
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Add a piece of raw text; return the clean text that is now certain, if any."""
        if self.stopped:
            return ""
        self._raw += piece
        text, self.stopped = self._clean()
        if not self.stopped:
            # Whitespace too: it goes if the text ends there or a template key follows.
            text = text[: len(text) - self._undecided_tail(text)].rstrip()
        return self._take(text)

    def finish(self) -> str:
        """The rest of the clean text, once the stream has ended."""
        return self._take(self.text)

    @property
    def text(self) -> str:
        """The clean text of everything fed so far."""
        return self._clean()[0]

    def _clean(self) -> tuple[str, bool]:
        """The clean text, and whether it ends at a stop string or a template key."""
        text = clean_response(self._raw)
        # clean_response cut the text at a template key: nothing after belongs to the answer.
        ended = any(k in self._raw for k in TEMPLATE_KEYS)
        cuts = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if cuts:
            return text[: min(cuts)], True
        return text, ended

    def _undecided_tail(self, text: str) -> int:
        """Length of the longest end of `text` that begins one of the watched strings."""
        for n in range(min(len(text), max(map(len, self._watch)) - 1), 0, -1):
            tail = text[-n:]
            if any(w.startswith(tail) for w in self._watch):
                return n
        return 0

    def _take(self, text: str) -> str:
        delta = text[self._sent :]
        self._sent = max(self._sent, len(text))
        return delta
