"""Stand-in engines for tests of routing and delivery: what the Engine protocol asks beyond ``submit``."""

from __future__ import annotations

from edged.engine.types import GenerationRequest


class StandInEngine:
    """Nothing queued, nothing to withdraw, a word per token; ``closed`` once the daemon closes it."""

    name = "stand-in"
    supports_thinking = True
    closed = False

    def queued(self) -> int:
        return 0

    def withdraw(self) -> list[GenerationRequest]:
        return []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def close(self) -> None:
        self.closed = True
