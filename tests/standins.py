"""Stand-in engines for tests of routing and delivery: what the Engine protocol asks beyond ``submit``."""

from __future__ import annotations

from edged.engine.types import AnswersAtOnce


class StandInEngine(AnswersAtOnce):
    """A word per token; ``closed`` once the daemon closes it."""

    name = "stand-in"
    supports_thinking = True
    closed = False

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def close(self) -> None:
        self.closed = True
