"""What one forward pass of the MLX engine's model costs, by how many new positions it feeds.

Part of the engine (imports mlx). A batched step shares the part of a pass paid once (reading the
weights, the step's own overhead) and none of the part paid per position: the split bounds what
running generations together can gain on a machine (``python -m edged.bench.scheduling --ceiling``).
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Sequence
from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache

from edged.engine.forward import Forward


def forward_seconds(model: Any, prompt: Sequence[int], widths: Sequence[int], repeats: int = 3) -> dict[int, float]:
    """Median seconds of a pass feeding the last ``n`` tokens of ``prompt`` after the KV of all of it, per ``n``."""
    forward = Forward(model)
    base = make_prompt_cache(model)
    mx.eval(forward.last(mx.array(list(prompt))[None], base))
    seconds: dict[int, float] = {}
    for n in widths:
        runs = []
        for _ in range(repeats):
            cache = copy.deepcopy(base)
            mx.eval([layer.state for layer in cache])
            started = time.perf_counter()
            mx.eval(forward.last(mx.array(list(prompt[-n:]))[None], cache))
            runs.append(time.perf_counter() - started)
        seconds[n] = statistics.median(runs)
    return seconds
