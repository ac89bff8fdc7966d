"""The model's forward pass, with the output head applied only where the next token is sampled.

Part of the engine (imports mlx). mlx-lm's ``Model.__call__`` projects every position onto the
vocabulary; a decode step samples from one position per row. In a batched step of 8 rows fed 4
positions each, the head (SmolLM2: 576 x 49,152, a fifth of the weights) would cost 32 rows of
products instead of 8. For the architectures whose ``__call__`` is body then head (nothing after
it), ``Forward`` runs the body and applies the head to the last position; any other model runs
whole and is sliced.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx

# model_type values whose Model.__call__ is `self.model(...)` then `lm_head` or the tied embedding.
BODY_AND_HEAD = frozenset({"llama", "mistral", "qwen2", "qwen3"})


class Forward:
    def __init__(self, model: Any):
        self.model = model
        args = getattr(model, "args", None)
        self.split = getattr(args, "model_type", None) in BODY_AND_HEAD and hasattr(model, "model")
        self._tied = bool(getattr(args, "tie_word_embeddings", False)) or not hasattr(model, "lm_head")

    def last(self, inputs: mx.array, cache: list[Any]) -> mx.array:
        """Feed ``inputs`` (batch, length); the logits (batch, vocab) after each row's last position."""
        if not self.split:
            return self.model(inputs, cache=cache)[:, -1, :]
        hidden = self.model.model(inputs, cache)[:, -1, :]
        return self.model.model.embed_tokens.as_linear(hidden) if self._tied else self.model.lm_head(hidden)
