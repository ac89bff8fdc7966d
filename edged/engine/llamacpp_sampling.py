"""Next-token choice on NumPy logits for the llama.cpp engine: penalties, thinking budget, grammar, sampler.

The same steps, in the same order, as the MLX engine's logits processors and mlx-lm's sampler:
presence penalty over the generated tokens, the thinking budget (force ``</think>`` once the
budget is spent, never a second one after it), the grammar's mask (with its wrap-up bonus near
the token limit), then greedy (temperature 0) or temperature sampling restricted by top-k,
top-p and min-p.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edged.engine.grammar import JsonConstraint
from edged.settings import SamplingSettings

NEG_INF = np.float32(-np.inf)


class Sampler:
    """One generation's token chooser (its own random stream, so concurrent generations stay independent)."""

    def __init__(self, sampling: SamplingSettings, *, think_end: int | None, seed: int | None):
        self.sampling = sampling
        self._think_end = think_end  # set only in think mode with a thinking budget
        self._rng = np.random.default_rng(seed)

    def choose(
        self, logits: np.ndarray, generated: Sequence[int], constraint: JsonConstraint | None, *, wrap_up: bool
    ) -> int:
        """The next token after ``logits`` (float32, one row; modified in place)."""
        s = self.sampling
        if s.presence_penalty > 0 and generated:
            logits[np.unique(np.asarray(generated, dtype=np.int64))] -= s.presence_penalty
        if self._think_end is not None and s.thinking_budget is not None:
            self._budget(logits, generated, s.thinking_budget, self._think_end)
        if constraint is not None and constraint.active:
            allowed, bonus = constraint.mask(logits.shape[-1], wrap_up=wrap_up)
            if bonus is not None:
                logits[: bonus.size] += bonus
            logits[: allowed.size][~allowed] = NEG_INF
            logits[allowed.size :] = NEG_INF
        if s.temperature <= 0:
            return int(np.argmax(logits))
        return self._sample(logits)

    @staticmethod
    def _budget(logits: np.ndarray, generated: Sequence[int], budget: int, end: int) -> None:
        if len(generated) < budget:
            return
        if end in generated:
            logits[end] = NEG_INF  # no second </think>
            return
        logits.fill(NEG_INF)
        logits[end] = 0.0

    def _sample(self, logits: np.ndarray) -> int:
        s = self.sampling
        candidates = np.flatnonzero(np.isfinite(logits))
        if candidates.size == 0:
            return int(np.argmax(logits))
        values = logits[candidates].astype(np.float64)
        if 0 < s.top_k < candidates.size:
            keep = np.argpartition(-values, s.top_k - 1)[: s.top_k]
            candidates, values = candidates[keep], values[keep]
        probs = np.exp((values - values.max()) / s.temperature)
        probs /= probs.sum()
        order = np.argsort(-probs, kind="stable")
        candidates, probs = candidates[order], probs[order]
        if 0 < s.top_p < 1:
            cut = int(np.searchsorted(np.cumsum(probs), s.top_p)) + 1
            candidates, probs = candidates[:cut], probs[:cut]
        if s.min_p > 0:
            keep_mask = probs >= s.min_p * probs[0]
            candidates, probs = candidates[keep_mask], probs[keep_mask]
        return int(self._rng.choice(candidates, p=probs / probs.sum()))
