"""Splitting Qwen3's ``<think>…</think>`` block from the answer, by token id."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ThinkTokens:
    start: int | None  # <think>
    end: int | None  # </think>; None for a model without a thinking mode


@dataclass(frozen=True)
class Split:
    reasoning: list[int] | None  # None when there was no thinking block
    answer: list[int]
    end_index: int | None  # position of </think> in the generated tokens


def split_thinking(tokens: Sequence[int], think: ThinkTokens, *, thinking: bool) -> Split:
    """Cut generated tokens at the first ``</think>``.

    In thinking mode, output that never reached ``</think>`` is all reasoning and no answer.
    Outside it, a stray block is still removed so that it never reaches a caller as an answer;
    an unclosed stray ``<think>`` ends the answer.
    """
    tokens = list(tokens)
    if think.end is None:
        return Split(reasoning=None, answer=tokens, end_index=None)
    if think.end in tokens:
        end = tokens.index(think.end)
        return Split(reasoning=_drop_start(tokens[:end], think), answer=tokens[end + 1 :], end_index=end)
    if thinking:
        return Split(reasoning=_drop_start(tokens, think), answer=[], end_index=None)
    if think.start in tokens:
        start = tokens.index(think.start)
        return Split(reasoning=tokens[start + 1 :], answer=tokens[:start], end_index=None)
    return Split(reasoning=None, answer=tokens, end_index=None)


def _drop_start(tokens: Sequence[int], think: ThinkTokens) -> list[int]:
    return [t for t in tokens if t != think.start]
