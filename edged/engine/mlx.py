"""The MLX engine: the only module that imports mlx / mlx_lm.

Loads a local model directory, renders chat prompts with the model's own template (Qwen3's
``enable_thinking`` hard switch), hands each generation to the scheduler thread that owns the
model (``edged.engine.scheduler``: priorities, batching, prefix cache, jump-forward) and splits the
thinking text from the answer at the ``</think>`` token id taken from the tokenizer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import mlx.core as mx
import structlog
from mlx_lm import load as mlx_load
from mlx_lm import stream_generate
from mlx_lm.sample_utils import make_logits_processors, make_sampler
from mlx_lm.utils import dequantize_model

from edged.engine import attention
from edged.engine.blas import loaded_blas
from edged.engine.control_tokens import ControlTokens
from edged.engine.decoding import Sequence as GenSequence
from edged.engine.errors import ContextOverflow
from edged.engine.grammar import Grammars
from edged.engine.prefix_cache import PrefixCache
from edged.engine.scheduled import ScheduledEngine
from edged.engine.scheduler import Scheduler
from edged.engine.thinking import ThinkTokens
from edged.engine.types import ChatMessage, Done, GenerationRequest
from edged.models.files import (
    ModelFacts,
    ModelInvalid,
    choose_dtype,
    read_facts,
    resolve_model_path,
    total_memory_bytes,
)
from edged.protocol import Mode
from edged.settings import ModelSettings, SamplingSettings

log = structlog.get_logger("edged.engine")
MIN_PREFIX = 32  # shorter system prompts are not worth caching


def yarn_overrides(settings: ModelSettings, native_context: int) -> dict[str, Any]:
    """model_config for mlx_lm.load that applies YaRN without touching the model's files."""
    if not settings.long_context:
        return {}
    original = settings.yarn_original_context or native_context
    return {
        "rope_scaling": {
            "rope_type": "yarn",
            "factor": settings.yarn_factor,
            "original_max_position_embeddings": original,
        },
        "max_position_embeddings": int(original * settings.yarn_factor),
    }


class ThinkBudget:
    """Logits processor: after ``budget`` generated tokens without ``</think>``, force ``</think>``
    (and never a second one after it).

    Works on lazy arrays only, so it never forces the pending forward pass to finish.
    """

    def __init__(self, prompt_len: int, end_id: int, budget: int):
        self._prompt_len = prompt_len
        self._end_id = end_id
        self._budget = budget

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        generated = tokens.size - self._prompt_len
        if generated < self._budget:
            return logits
        closed = mx.any(tokens[self._prompt_len :] == self._end_id)
        forced = mx.full(logits.shape, -mx.inf, dtype=logits.dtype)
        forced[..., self._end_id] = 0.0
        after = mx.where(mx.arange(logits.shape[-1]) == self._end_id, -mx.inf, logits)  # no second </think>
        return mx.where(closed, after, forced)


class MlxEngine(ScheduledEngine[GenSequence]):
    """Owns one loaded model; implements :class:`edged.engine.types.Engine`. ``submit`` (and the blocking
    ``generate``) may be called from several threads at once: the scheduler thread runs them all (by
    priority, decoding concurrent ones as a batch)."""

    def __init__(self, settings: ModelSettings):
        self.name = settings.display_name()
        self.path = resolve_model_path(settings.path)
        started = time.perf_counter()
        facts = read_facts(self.path)
        self.dtype, dtype_reason = choose_dtype(
            settings.dtype, facts, metal=mx.metal.is_available(), ram_bytes=total_memory_bytes()
        )
        overrides = yarn_overrides(settings, facts.context_length)
        log.info(
            "model_loading",
            path=str(self.path),
            architecture=facts.architecture,
            parameters=facts.parameters,
            quantization=facts.quantization,
            dtype=self.dtype,
            dtype_reason=dtype_reason,
            long_context=bool(overrides),
        )
        self.model, self.tokenizer = mlx_load(str(self.path), model_config=overrides or None)  # type: ignore[misc]
        self._control = ControlTokens.of(self.tokenizer)
        if not self.tokenizer.has_chat_template:
            raise ModelInvalid(f"{self.path}: the tokenizer has no chat template; edged needs one to build prompts")
        self._convert_weights()
        self.cpu_attention = not mx.metal.is_available() and attention.install(self.model)
        self.context_limit = min(
            int(overrides.get("max_position_embeddings", facts.context_length) or 1 << 30),
            settings.max_context or 1 << 30,
        )
        self.think = ThinkTokens(start=self.tokenizer.think_start_id, end=self.tokenizer.think_end_id)
        self.supports_thinking = self.think.end is not None
        self._grammars: Grammars | None = None
        self._grammars_lock = threading.Lock()
        self._system_tokens: dict[str, list[int]] = {}
        self._prefixes = PrefixCache(max_bytes=settings.prefix_cache_mb << 20) if settings.prefix_cache_mb else None
        self.jump_forward = settings.scheduler.jump_forward
        if settings.seed is not None:
            mx.random.seed(settings.seed)
        self._warn_if_too_big(facts)
        self._warm_up()
        sched = settings.scheduler
        self.scheduler = Scheduler(
            self.model,
            prefixes=self._prefixes,
            max_batch=sched.max_batch,
            fair_share=sched.fair_share,
            prefill_chunk=sched.prefill_chunk,
            share_prefix=self.cpu_attention,
        )
        log.info(
            "model_loaded",
            path=str(self.path),
            seconds=round(time.perf_counter() - started, 2),
            thinking=self.supports_thinking,
            context_limit=self.context_limit,
            blas=loaded_blas(),
            peak_memory_mb=round(mx.get_peak_memory() / 1e6, 1),
        )

    def _convert_weights(self) -> None:
        if self.dtype == "keep":
            return
        self.model = dequantize_model(self.model)
        self.model.set_dtype(getattr(mx, self.dtype))
        mx.eval(self.model.parameters())

    def _warn_if_too_big(self, facts: ModelFacts) -> None:
        need = facts.memory_bytes(dtype=self.dtype, context=min(self.context_limit, 32768))
        ram = total_memory_bytes()
        if ram and need > ram * 0.8:
            log.warning(
                "model_may_not_fit",
                need_gb=round(need / 1e9, 1),
                ram_gb=round(ram / 1e9, 1),
                hint="set model.max_context lower, or model.dtype=keep",
            )

    def _warm_up(self) -> None:
        """One token through the model, so the first request does not pay for lazy initialisation."""
        prompt = mx.array(self.tokenizer.encode("warm up", add_special_tokens=False))
        for _ in stream_generate(self.model, self.tokenizer, prompt, max_tokens=1):
            pass

    def render(self, messages: Sequence[ChatMessage], mode: Mode) -> list[int]:
        """The prompt token ids for ``messages``, ending in the assistant's generation prompt."""
        return list(
            self.tokenizer.apply_chat_template(
                self._control.messages(messages),
                add_generation_prompt=True,
                enable_thinking=mode == "think",
                tokenize=True,
            )
        )

    def _static_prefix(self, messages: Sequence[ChatMessage], prompt: list[int]) -> int:
        """How many leading prompt tokens are the system message alone (0 if not a clean prefix)."""
        if not messages or messages[0].get("role") != "system":
            return 0
        system = self._system_tokens.get(messages[0]["content"])
        if system is None:
            system = list(self.tokenizer.apply_chat_template([messages[0]], add_generation_prompt=False, tokenize=True))
            self._system_tokens = {messages[0]["content"]: system}  # the latest system text only
        n = len(system)
        return n if MIN_PREFIX <= n < len(prompt) and prompt[:n] == system else 0

    def cache_bytes(self) -> int:
        """Memory held by the prefix cache (reported in {base}/stats)."""
        return self._prefixes.stats.bytes if self._prefixes else 0

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def cache_stats(self) -> dict[str, int] | None:
        """The prefix cache's counters (hits, misses, cached_tokens, bytes, entries)."""
        return vars(self._prefixes.stats).copy() if self._prefixes else None

    def _sequence(self, request: GenerationRequest, jump_forward: bool | None, on_done: Done) -> GenSequence:
        prompt = self.render(request.messages, request.mode)
        if len(prompt) >= self.context_limit:
            raise ContextOverflow(len(prompt), self.context_limit)
        constraint = None
        if request.schema is not None:
            start_after = self.think.end if request.mode == "think" and self.supports_thinking else None
            jump = self.jump_forward if jump_forward is None else jump_forward
            constraint = self.grammars().constraint(dict(request.schema), start_after=start_after, jump=jump)
        sampling = request.sampling
        return GenSequence(
            prompt=prompt,
            max_tokens=min(sampling.max_tokens, self.context_limit - len(prompt)),
            sampler=_sampler(sampling),
            processors=self._processors(sampling, request.mode),
            eos=frozenset(self.tokenizer.eos_token_ids),
            priority=request.priority,
            constraint=constraint,
            static_prefix=self._static_prefix(request.messages, prompt) if self._prefixes is not None else 0,
            keep=request.keep,
            should_stop=request.should_stop,
            expired=request.expired,
            request=request,
            on_end=lambda seq: self._ended(request, seq, on_done),
        )

    def _detokenize(self, tokens: Sequence[int]) -> str:
        """Text of ``tokens`` without control tokens."""
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def grammars(self) -> Grammars:
        """The constrained-decoding tokenizer, built on first use (~0.3 s for 49k tokens, ~3 s for Qwen3's 152k)."""
        with self._grammars_lock:
            if self._grammars is None:
                vocab = getattr(getattr(self.model, "args", None), "vocab_size", None) or len(self.tokenizer.vocab)
                self._grammars = Grammars(self.tokenizer._tokenizer, vocab)
            return self._grammars

    def _processors(self, sampling: SamplingSettings, mode: Mode) -> list[Any]:
        """Logits processors; they are called with the generated tokens so far."""
        processors: list[Any] = []
        if sampling.presence_penalty > 0:
            processors += make_logits_processors(presence_penalty=sampling.presence_penalty)
        if mode == "think" and self.think.end is not None and sampling.thinking_budget is not None:
            processors.append(ThinkBudget(0, self.think.end, sampling.thinking_budget))
        return processors


def _sampler(s: SamplingSettings) -> Callable[[mx.array], mx.array]:
    return make_sampler(temp=s.temperature, top_p=s.top_p, min_p=s.min_p, top_k=s.top_k)
