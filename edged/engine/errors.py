"""Exceptions an engine raises for a request that cannot run (no mlx import here)."""

from __future__ import annotations


class ContextOverflow(Exception):
    """The rendered prompt does not fit the context limit; nothing was generated."""

    def __init__(self, prompt_tokens: int, limit: int):
        super().__init__(f"the prompt has {prompt_tokens} tokens; the context limit is {limit}")
        self.prompt_tokens = prompt_tokens
        self.limit = limit
