"""The llama.cpp engine: GGUF models on CPUs where llama.cpp's integer SIMD kernels beat MLX.

Implements :class:`edged.engine.types.Engine` like the MLX engine does, with the same behaviour:
prompts from the model's own chat template (from the GGUF, with Qwen3's ``enable_thinking``
switch), the same llguidance JSON-schema grammars applied to llama.cpp's logits (and their
forced tokens fed without sampling), the ``</think>`` split by token id and the thinking budget,
priorities with preemption between steps, and the static prompt prefix kept in the KV cache.
The only module besides its ``llamacpp_*`` helpers that imports ``llama_cpp``.
"""

from __future__ import annotations

import itertools
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import structlog

from edged.engine.control_tokens import ControlTokens
from edged.engine.errors import ContextOverflow
from edged.engine.grammar import Grammars
from edged.engine.llamacpp_cache import KeptPrefixes, SeqPool
from edged.engine.llamacpp_chat import ChatTemplate
from edged.engine.llamacpp_facts import kv_bytes_per_token
from edged.engine.llamacpp_runtime import Feed, Runtime
from edged.engine.llamacpp_sampling import Sampler
from edged.engine.llamacpp_scheduler import LlamaScheduler, LlamaSequence, _no_mlx_sampler
from edged.engine.scheduled import ScheduledEngine
from edged.engine.thinking import ThinkTokens
from edged.engine.types import ChatMessage, Done, GenerationRequest
from edged.models.files import ModelInvalid, ModelNotFound
from edged.protocol import Mode
from edged.settings import ModelSettings

log = structlog.get_logger("edged.engine")
MIN_PREFIX = 32  # shorter system prompts are not worth keeping
DEFAULT_CONTEXT = 8192  # KV cells llama.cpp allocates up front when model.max_context is not set
KEPT_ENTRIES = 4  # kept prefixes (registry versions x modes, sessions) at most


def find_gguf(path: str) -> Path:
    """``path`` itself when it names a .gguf file, else the one .gguf file in the directory ``path``."""
    p = Path(path).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return p
    if p.is_dir():
        found = sorted(p.glob("*.gguf"))
        if len(found) == 1:
            return found[0]
        if found:
            raise ModelInvalid(f"{p}: holds {len(found)} .gguf files; set model.path to one of them")
    raise ModelNotFound(f"{p}: no .gguf file (the llama.cpp engine loads GGUF models)")


class LlamaCppEngine(ScheduledEngine[LlamaSequence]):
    """Owns one loaded GGUF model; implements :class:`edged.engine.types.Engine`."""

    def __init__(self, settings: ModelSettings):
        self.name = settings.display_name()
        self.path = find_gguf(settings.path)
        started = time.perf_counter()
        sched = settings.scheduler
        self.runtime = Runtime(
            self.path,
            n_ctx=settings.max_context or DEFAULT_CONTEXT,
            n_seq=3 * sched.max_batch + 1 + KEPT_ENTRIES,  # every class's batch and prefill, and the kept prefixes
            n_batch=max(512, sched.prefill_chunk),
        )
        meta = self.runtime.metadata
        arch = meta.get("general.architecture", "?")
        trained = int(meta.get(f"{arch}.context_length", self.runtime.n_ctx))
        self.context_limit = min(trained, self.runtime.n_ctx)
        self._template = ChatTemplate(meta.get("tokenizer.chat_template"), bos=self._token_text(meta, "bos"))
        self._control = ControlTokens(self.runtime.added_tokens())
        self.think = ThinkTokens(start=self.runtime.token_id("<think>"), end=self.runtime.token_id("</think>"))
        self.supports_thinking = self.think.end is not None and self._template.thinking_switch
        self.eos = self.runtime.end_of_generation()
        self.jump_forward = sched.jump_forward
        self.bytes_per_token = kv_bytes_per_token(meta, arch)
        self._seeds = itertools.count(settings.seed if settings.seed is not None else int(time.time()))
        self._grammars: Grammars | None = None
        self._grammars_lock = threading.Lock()
        self._system_tokens: dict[tuple[str, Mode], list[int]] = {}
        pool = SeqPool(list(range(self.runtime.n_seq)))
        self._prefixes = self._kept_prefixes(settings, pool)
        self._warm_up(pool)
        self.scheduler = LlamaScheduler(
            self.runtime,
            pool,
            self._prefixes,
            max_batch=sched.max_batch,
            fair_share=sched.fair_share,
            prefill_chunk=sched.prefill_chunk,
        )
        log.info(
            "model_loaded",
            engine="llamacpp",
            path=str(self.path),
            architecture=arch,
            seconds=round(time.perf_counter() - started, 2),
            thinking=self.supports_thinking,
            context_limit=self.context_limit,
            kv_cells=self.runtime.n_ctx,
            kv_mb=round(self.runtime.n_ctx * self.bytes_per_token / 1e6, 1),
        )

    def _token_text(self, meta: dict[str, str], key: str) -> str:
        token = meta.get(f"tokenizer.ggml.{key}_token_id")
        return self.runtime.piece(int(token), special=True).decode("utf-8", errors="replace") if token else ""

    def _kept_prefixes(self, settings: ModelSettings, pool: SeqPool) -> KeptPrefixes | None:
        if not settings.prefix_cache_mb:
            return None
        return KeptPrefixes(
            pool,
            copy=self.runtime.copy,
            drop=self.runtime.drop,
            max_entries=KEPT_ENTRIES,
            max_tokens=max(1, (settings.prefix_cache_mb << 20) // max(1, self.bytes_per_token)),
            bytes_per_token=self.bytes_per_token,
        )

    def _warm_up(self, pool: SeqPool) -> None:
        """One token through the model, so the first request does not pay for lazy initialisation."""
        seq = pool.free[0]
        self.runtime.decode([Feed(seq, self.runtime.tokenize("warm up", special=False), 0)])
        self.runtime.drop(seq)

    # -- prompts ------------------------------------------------------------------------------
    def render(self, messages: Sequence[ChatMessage], mode: Mode) -> list[int]:
        """The prompt token ids for ``messages``, ending in the assistant's generation prompt."""
        text = self._template.render(self._control.messages(messages), generation_prompt=True, thinking=mode == "think")
        return self.runtime.tokenize(text)

    def _static_prefix(self, messages: Sequence[ChatMessage], prompt: list[int], mode: Mode) -> int:
        """How many leading prompt tokens are the system message alone (0 if not a clean prefix)."""
        if not messages or messages[0].get("role") != "system":
            return 0
        key = (messages[0]["content"], mode)
        system = self._system_tokens.get(key)
        if system is None:
            text = self._template.render(
                self._control.messages(messages[:1]), generation_prompt=False, thinking=mode == "think"
            )
            system = self.runtime.tokenize(text)
            kept = list(self._system_tokens.items())[-(KEPT_ENTRIES - 1) :]  # the latest few texts only
            self._system_tokens = {**dict(kept), key: system}
        n = len(system)
        return n if MIN_PREFIX <= n < len(prompt) and prompt[:n] == system else 0

    def count_tokens(self, text: str) -> int:
        return len(self.runtime.tokenize(text, special=False))

    def cache_bytes(self) -> int:
        return self._prefixes.stats.bytes if self._prefixes else 0

    def cache_stats(self) -> dict[str, int] | None:
        return vars(self._prefixes.stats).copy() if self._prefixes else None

    def _sequence(self, request: GenerationRequest, jump_forward: bool | None, on_done: Done) -> LlamaSequence:
        prompt = self.render(request.messages, request.mode)
        if len(prompt) >= self.context_limit:
            raise ContextOverflow(len(prompt), self.context_limit)
        thinking = request.mode == "think" and self.supports_thinking
        constraint = None
        if request.schema is not None:
            jump = self.jump_forward if jump_forward is None else jump_forward
            start_after = self.think.end if thinking else None
            constraint = self.grammars().constraint(dict(request.schema), start_after=start_after, jump=jump)
        sampling = request.sampling
        return LlamaSequence(
            prompt=prompt,
            max_tokens=min(sampling.max_tokens, self.context_limit - len(prompt)),
            sampler=_no_mlx_sampler,
            processors=[],
            eos=self.eos,
            priority=request.priority,
            constraint=constraint,
            static_prefix=self._static_prefix(request.messages, prompt, request.mode) if self._prefixes else 0,
            keep=request.keep,
            should_stop=request.should_stop,
            expired=request.expired,
            request=request,
            on_end=lambda seq: self._ended(request, seq, on_done),
            chooser=Sampler(sampling, think_end=self.think.end if thinking else None, seed=next(self._seeds)),
        )

    def _detokenize(self, tokens: Sequence[int]) -> str:
        """Text of ``tokens`` without control tokens (as ``skip_special_tokens`` does)."""
        return self.runtime.detokenize(tokens, special=False)

    def grammars(self) -> Grammars:
        """The constrained-decoding tokenizer from the GGUF vocabulary, built on first use."""
        with self._grammars_lock:
            if self._grammars is None:
                from llguidance.llamacpp import lltokenizer_from_vocab

                n = self.runtime.n_vocab
                with warnings.catch_warnings():  # it asks llama.cpp's deprecated per-token attribute call 150k times
                    warnings.simplefilter("ignore", DeprecationWarning)
                    lltok = lltokenizer_from_vocab(self.runtime.vocab, n_vocab=n, eos_token=sorted(self.eos))
                self._grammars = Grammars(None, n, lltokenizer=lltok)
            return self._grammars
