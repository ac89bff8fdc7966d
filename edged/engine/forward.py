"""The model's forward pass, with the output head applied only where the next token is sampled.

Part of the engine (imports mlx). mlx-lm's ``Model.__call__`` projects every position onto the
vocabulary; a decode step samples from one position per row, a prefill chunk from its last. In a
batched step of 8 rows fed 4 positions each, the head (SmolLM2: 576 x 49,152, a fifth of the
weights) would cost 32 rows of products instead of 8; in a 128-token prefill chunk, 128 instead of
1. For the architectures whose ``__call__`` is body then head (nothing after it), ``Forward`` runs
the body and applies the head to the last position; any other model runs whole and is sliced.

In a batched step whose rows feed different numbers of tokens, the short rows are padded. The
padding is masked out of attention, but the per-position products (the MLP, most of a layer) would
still run on it: with 8 rows of which one feeds a 4-token forced chunk, 32 positions instead of 11.
For the blocks that are "attention, then MLP, each on a normed residual", ``Forward`` keeps the
residual stream packed (real positions only), and lays it out padded only for attention.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import numpy as np

# model_type values whose Model.__call__ is `self.model(...)` then `lm_head` or the tied embedding,
# and whose body is embed, blocks of `h + attn(norm(h))` then `h + mlp(norm(h))`, final norm.
BODY_AND_HEAD = frozenset({"llama", "mistral", "qwen2", "qwen3"})
BLOCK_PARTS = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")


class Forward:
    def __init__(self, model: Any):
        self.model = model
        args = getattr(model, "args", None)
        self.split = getattr(args, "model_type", None) in BODY_AND_HEAD and hasattr(model, "model")
        self._tied = bool(getattr(args, "tie_word_embeddings", False)) or not hasattr(model, "lm_head")
        layers = getattr(getattr(model, "model", None), "layers", [])
        self.packed_steps = 0  # steps that ran packed (padding present)
        self.packable = self.split and all(
            all(hasattr(layer, part) for part in BLOCK_PARTS) and not getattr(layer, "use_sliding", False)
            for layer in layers
        )

    def last(self, inputs: mx.array, cache: list[Any], lengths: list[int] | None = None) -> mx.array:
        """Feed ``inputs`` (batch, width); the logits (batch, vocab) after each row's last position.

        ``lengths``: row ``b`` feeds only its last ``lengths[b]`` positions (the others are padding)."""
        if not self.split:
            return self.model(inputs, cache=cache)[:, -1, :]
        batch, width = inputs.shape
        if lengths is not None and self.packable and sum(lengths) < batch * width:
            hidden = self._packed_body(inputs, cache, lengths)
            self.packed_steps += 1
        else:
            hidden = self.model.model(inputs, cache)[:, -1, :]
        return self.model.model.embed_tokens.as_linear(hidden) if self._tied else self.model.lm_head(hidden)

    def _packed_body(self, inputs: mx.array, cache: list[Any], lengths: list[int]) -> mx.array:
        """The body with the residual stream held at the real positions only; (batch, hidden) at each row's last."""
        body = self.model.model
        batch, width = inputs.shape
        real = mx.array(np.concatenate([row * width + np.arange(width - n, width) for row, n in enumerate(lengths)]))
        h = body.embed_tokens(inputs.reshape(-1)[real])  # (real positions, hidden)
        padded_shape = (batch * width, h.shape[-1])
        mask = cache[0].make_mask(width)  # padded slots masked (the batch cache's own mask)
        for layer, layer_cache in zip(body.layers, cache):
            x = mx.zeros(padded_shape, dtype=h.dtype)
            x[real] = layer.input_layernorm(h)
            attended = layer.self_attn(x.reshape(batch, width, -1), mask, layer_cache)
            h = h + attended.reshape(padded_shape)[real]
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return body.norm(h[mx.array(np.cumsum(lengths) - 1)])
