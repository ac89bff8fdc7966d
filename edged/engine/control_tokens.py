"""Text from callers, devices and sensors must not spell the model's control tokens.

A chat template renders messages to text and the tokenizer then turns ``<|im_start|>`` (or
``<think>``) back into the control token, wherever it came from: a request could close its own
turn and open a forged ``system`` one. Every added token written in a message is broken with an
invisible word joiner before tokenising, so it stays ordinary text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

WORD_JOINER = "\u2060"


class ControlTokens:
    def __init__(self, strings: Iterable[str]):
        tokens = sorted({s for s in strings if len(s) > 1}, key=len, reverse=True)  # longest first
        self._pattern = re.compile("|".join(map(re.escape, tokens))) if tokens else None

    @classmethod
    def of(cls, tokenizer: Any) -> ControlTokens:
        """The added tokens (specials, ``<think>``, tool tags) of a Hugging Face tokenizer or mlx-lm's wrapper."""
        get = getattr(tokenizer, "get_added_vocab", None)
        return cls(get() if callable(get) else ())

    def defang(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda m: m.group(0)[0] + WORD_JOINER + m.group(0)[1:], text)

    def messages(self, messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return [
            {**m, "content": self.defang(m["content"])} if isinstance(m.get("content"), str) else dict(m)
            for m in messages
        ]
