"""The head applied to the last position only gives the logits the whole model gives there."""

from __future__ import annotations

import mlx.core as mx
import pytest
from mlx_lm.models.cache import make_prompt_cache

from edged.engine.forward import Forward


@pytest.mark.parametrize("which", ["engine", "smol_engine"])
def test_last_position_logits_equal_the_whole_models(request, which):
    model = request.getfixturevalue(which).model
    forward = Forward(model)
    assert forward.split  # qwen3 and llama take the short path
    tokens = mx.array([[11, 22, 33, 44, 55, 66], [77, 88, 99, 111, 122, 133]])
    whole = model(tokens, cache=make_prompt_cache(model))
    last = forward.last(tokens, make_prompt_cache(model))
    assert last.shape == (2, whole.shape[-1]) and mx.allclose(last, whole[:, -1], atol=1e-4)
