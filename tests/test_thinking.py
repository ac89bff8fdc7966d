"""Splitting Qwen3's thinking block from the answer, by token id."""

from __future__ import annotations

from edged.engine.thinking import Split, ThinkTokens, split_thinking

QWEN = ThinkTokens(start=900, end=901)


def test_thinking_mode_with_end_token() -> None:
    """Reasoning is before </think> without <think>; the answer follows it."""
    tokens = [900, 1, 2, 3, 901, 7, 8]
    split = split_thinking(tokens, QWEN, thinking=True)
    assert split == Split(reasoning=[1, 2, 3], answer=[7, 8], end_index=4)


def test_end_index_is_first_end_token() -> None:
    """The cut is at the first </think>; a later one stays in the answer."""
    split = split_thinking([1, 901, 2, 901, 3], QWEN, thinking=True)
    assert split.end_index == 1
    assert split.reasoning == [1]
    assert split.answer == [2, 901, 3]


def test_thinking_mode_without_end_token() -> None:
    """Output that never reaches </think> is all reasoning and no answer."""
    split = split_thinking([900, 1, 2, 3], QWEN, thinking=True)
    assert split == Split(reasoning=[1, 2, 3], answer=[], end_index=None)


def test_thinking_mode_answer_right_after_end() -> None:
    """An empty thinking block gives empty reasoning, not None."""
    split = split_thinking([900, 901, 5], QWEN, thinking=True)
    assert split == Split(reasoning=[], answer=[5], end_index=1)


def test_non_thinking_mode_removes_stray_block() -> None:
    """Outside thinking mode a stray block is cut from the answer."""
    split = split_thinking([900, 4, 901, 5, 6], QWEN, thinking=False)
    assert split.answer == [5, 6]
    assert split.end_index == 2
    assert 900 not in split.answer and 4 not in split.answer


def test_non_thinking_mode_without_block() -> None:
    """Outside thinking mode, plain output is all answer."""
    split = split_thinking([4, 5, 6], QWEN, thinking=False)
    assert split == Split(reasoning=None, answer=[4, 5, 6], end_index=None)


def test_model_without_think_tokens() -> None:
    """A model without a thinking mode returns everything as the answer."""
    for thinking in (True, False):
        split = split_thinking([900, 1, 901, 2], ThinkTokens(None, None), thinking=thinking)
        assert split == Split(reasoning=None, answer=[900, 1, 901, 2], end_index=None)


def test_accepts_tuple() -> None:
    """Any sequence of token ids works, and the result holds lists."""
    split = split_thinking((900, 1, 901, 2), QWEN, thinking=True)
    assert split.reasoning == [1] and split.answer == [2]


def test_non_thinking_mode_cuts_an_unclosed_stray_block() -> None:
    """Outside thinking mode an unclosed <think> ends the answer; what follows is not answer text."""
    split = split_thinking([5, 6, 900, 7, 8], QWEN, thinking=False)
    assert split.answer == [5, 6] and split.reasoning == [7, 8]
