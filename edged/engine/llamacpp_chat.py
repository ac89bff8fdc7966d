"""Chat prompts from a GGUF's own template (``tokenizer.chat_template``), rendered as Hugging Face does.

The template is Jinja in a sandbox with the globals Hugging Face's ``apply_chat_template`` offers
(``raise_exception``, ``strftime_now``), ``trim_blocks``/``lstrip_blocks`` and loop controls, so
Qwen3's ``enable_thinking`` switch and ChatML templates render to the same text as with the
model's tokenizer files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from jinja2 import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


class TemplateMissing(ValueError):
    pass


def _raise(message: str) -> None:
    raise TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class ChatTemplate:
    def __init__(self, source: str | None, *, bos: str = "", eos: str = ""):
        if not source:
            raise TemplateMissing("the model has no chat template; edged needs one to build prompts")
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.globals.update(raise_exception=_raise, strftime_now=_strftime_now)
        self._template = env.from_string(source)
        self._bos, self._eos = bos, eos
        self.thinking_switch = "enable_thinking" in source  # Qwen3's hard switch

    def render(self, messages: Sequence[Mapping[str, Any]], *, generation_prompt: bool, thinking: bool) -> str:
        return self._template.render(
            messages=list(messages),
            add_generation_prompt=generation_prompt,
            enable_thinking=thinking,
            bos_token=self._bos,
            eos_token=self._eos,
        )
