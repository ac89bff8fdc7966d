"""Chat messages for each kind of request. Pure functions: no model, no I/O."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from edged.protocol import Kind


@dataclass(frozen=True)
class Turn:
    """One earlier exchange of a session, as the next prompt sees it."""

    user: str
    answer: str  # the final answer, never the thinking text
    tokens: int


COMMAND_SYSTEM = (
    "You are edged, the local controller of a home or a plant. Turn the user's request into device "
    'actions. Answer with one JSON object only, no prose: {"actions": [{"device": "<device id>", '
    '"action": "<action>", "params": {}}], "say": "<one short sentence for the user>"}. '
    'If the request is not a device command, answer {"actions": [], "say": "<why>"}.'
)

QUERY_SYSTEM = (
    "You are edged, a diagnostic assistant for devices and sensors. Reason step by step about the "
    "question and any readings given, then answer concisely: what is most likely happening, how "
    "serious it is, and what to check or do next."
)

SYSTEM: dict[str, str] = {"command": COMMAND_SYSTEM, "query": QUERY_SYSTEM}


def user_content(text: str, context: Mapping[str, object] | None) -> str:
    """The user's text, followed by the caller's structured context as compact JSON."""
    if not context:
        return text
    data = json.dumps(context, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
    return f"{text}\n\nContext (JSON):\n{data}"


def build_messages(
    kind: Kind, text: str, *, context: Mapping[str, object] | None = None, history: Iterable[Turn] = ()
) -> list[dict[str, str]]:
    """System prompt first (static, so a prompt cache can reuse it), then history, then the request."""
    messages = [{"role": "system", "content": SYSTEM[kind]}]
    for turn in history:
        messages.append({"role": "user", "content": turn.user})
        messages.append({"role": "assistant", "content": turn.answer})
    messages.append({"role": "user", "content": user_content(text, context)})
    return messages
