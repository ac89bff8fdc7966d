"""Which Qwen3 mode a request runs in.

Precedence, highest first: the request's ``think`` field; a ``/think`` or ``/no_think`` soft
switch at the end of the text; the last soft switch remembered by the session; the topic's
default (commands no_think, queries think). The switch is stripped from the text and applied
through the chat template's ``enable_thinking``, the hard switch, so the model never sees a
contradiction between the two.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edged.protocol import Kind, Mode

TOPIC_DEFAULT: dict[str, Mode] = {"command": "no_think", "query": "think"}
_SWITCH = re.compile(r"(?:^|\s)/(think|no_think)\s*$")


@dataclass(frozen=True)
class Route:
    mode: Mode
    text: str  # the user text with a trailing soft switch removed
    switch: Mode | None  # the soft switch found in this text, for the session to remember


def split_soft_switch(text: str) -> tuple[str, Mode | None]:
    """Remove a trailing ``/think`` or ``/no_think`` and say which it was."""
    found = _SWITCH.search(text)
    if found is None:
        return text, None
    return text[: found.start()].rstrip(), "think" if found.group(1) == "think" else "no_think"


def route(kind: Kind, text: str, *, think: bool | None, remembered: Mode | None) -> Route:
    stripped, switch = split_soft_switch(text)
    if think is not None:
        mode: Mode = "think" if think else "no_think"
    else:
        mode = switch or remembered or TOPIC_DEFAULT[kind]
    return Route(mode=mode, text=stripped or text, switch=switch)
