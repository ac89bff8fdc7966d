"""What a command resolver proposes before validation: the same shape as the model's answer.

Three resolvers turn a command's text into device actions, cheapest first: sentence templates
(``local``), rules over the registry (``rules``), then the model (``model``). Each proposal is
rendered as the JSON the model would have written and validated by the same code
(:func:`edged.devices.actions.parse_answer`), so no path can reach a device, an action or a value
the registry does not allow, and every path meets the same confirmation policy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from edged.devices.registry import Registry

ResolvedBy = Literal["local", "rules", "model"]
ParamValue = int | float | str | bool


@dataclass(frozen=True)
class Call:
    """One proposed action: on a device by id, or on every device of ``type`` in ``area`` ("all": everywhere)."""

    action: str
    params: Mapping[str, ParamValue] = field(default_factory=dict)
    device: str | None = None
    area: str | None = None
    type: str | None = None

    def answer_item(self) -> dict[str, object]:
        target: dict[str, object] = {"device": self.device} if self.device else {"area": self.area, "type": self.type}
        return {**target, "action": self.action, "params": dict(self.params)}


@dataclass(frozen=True)
class Proposal:
    """A resolver's whole answer to one command (or to one part of a request with several)."""

    calls: tuple[Call, ...]
    resolved_by: ResolvedBy
    intent: str | None = None  # e.g. "HassTurnOff" (local) or "turn_off" (rules)
    say: str = ""

    def answer_json(self) -> str:
        """The proposal as the model's answer would be, for the shared validation."""
        return json.dumps({"actions": [c.answer_item() for c in self.calls], "say": self.say}, ensure_ascii=False)


@dataclass(frozen=True)
class CommandContext:
    """What a resolver knows besides the registry: the words, their language, where the speaker is."""

    text: str
    language: str = "en"
    area: str | None = None  # the requester's area id (request field ``area``), for "the lights" or "in here"
    states: Mapping[str, str] = field(default_factory=dict)  # device id -> latest state (JSON text) from its topic


class Resolver(Protocol):
    """One layer of command resolution: a proposal for a single command, or None to pass it on."""

    def resolve(self, registry: Registry, command: CommandContext) -> Proposal | None: ...
