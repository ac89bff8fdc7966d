"""The command pipeline before the model: split a request into commands, resolve each, cheapest first.

Each part goes to the resolvers in order (sentence templates, then rules over the registry); the
request is resolved only when every part is. A split ("... and ...") is kept only when all its
parts resolve, otherwise the whole text is tried as one command. What is left goes to the model.
"""

from __future__ import annotations

import inspect
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import structlog

from edged.devices.proposal import Call, CommandContext, Proposal, ResolvedBy, Resolver
from edged.devices.registry import Registry
from edged.devices.split import candidate_splits, carry_verb, clean

log = structlog.get_logger("edged.commands")


@dataclass(frozen=True)
class Resolution:
    """Every part of a request resolved without the model: the parts' proposals, in the order spoken."""

    parts: tuple[Proposal, ...]

    @property
    def resolved_by(self) -> ResolvedBy:
        return "local" if all(p.resolved_by == "local" for p in self.parts) else "rules"

    @property
    def intent(self) -> str | list[str]:
        names = [p.intent or "" for p in self.parts]
        return names[0] if len(names) == 1 else names

    def proposal(self) -> Proposal:
        calls: tuple[Call, ...] = tuple(c for p in self.parts for c in p.calls)
        say = " ".join(p.say for p in self.parts if p.say)
        return Proposal(calls, self.resolved_by, say=say)


class CommandPipeline:
    """Resolvers in order of cost; ``resolve`` answers for a whole request or returns None."""

    def __init__(self, resolvers: Sequence[Resolver]):
        self.resolvers = list(resolvers)

    def warm_up(self, registry: Registry, languages: Sequence[str] = ("en",)) -> float:
        """Load templates and build matchers before the first request; seconds taken."""
        started = time.perf_counter()
        for resolver in self.resolvers:
            warm = getattr(resolver, "warm_up", None)
            if warm is None:
                continue
            if "languages" in inspect.signature(warm).parameters:
                warm(registry, languages=languages)
            else:
                warm(registry)
        return round(time.perf_counter() - started, 3)

    def resolve(self, registry: Registry, command: CommandContext) -> Resolution | None:
        seen: dict[str, Proposal | None] = {}  # one request's parts recur across splits: resolve each once
        for parts in candidate_splits(command.text, command.language):
            found = self._all(registry, command, parts, seen)
            if found is not None:
                return found
        whole = clean(command.text, command.language)
        for text in dict.fromkeys((whole, command.text.strip())):
            one = self.resolve_one(registry, replace(command, text=text), seen) if text else None
            if one is not None:
                return Resolution((one,))
        return None

    def _all(
        self, registry: Registry, command: CommandContext, parts: list[str], seen: dict[str, Proposal | None]
    ) -> Resolution | None:
        found: list[Proposal] = []
        for i, part in enumerate(parts):
            readings = [part]
            if i:  # "... and the fan": the verb before it; "... and set it to 70": the device before it
                borrowed = carry_verb(parts[i - 1], part)
                readings = [
                    *([borrowed] if borrowed else []),
                    part,
                    *refer_back(registry, found[-1], part, command.language),
                ]
            one = next((p for t in readings if (p := self.resolve_one(registry, replace(command, text=t), seen))), None)
            if one is None:
                return None
            found.append(one)
        return None if _contradicts(found) else Resolution(tuple(found))

    def resolve_one(
        self, registry: Registry, command: CommandContext, seen: dict[str, Proposal | None] | None = None
    ) -> Proposal | None:
        """The first resolver's proposal with at least one call; a failing resolver is skipped, logged."""
        seen = {} if seen is None else seen
        if command.text not in seen:
            seen[command.text] = self._first(registry, command)
        return seen[command.text]

    def _first(self, registry: Registry, command: CommandContext) -> Proposal | None:
        for resolver in self.resolvers:
            try:
                proposal = resolver.resolve(registry, command)
            except Exception:
                log.exception("resolver_failed", resolver=type(resolver).__name__, text=command.text)
                continue
            if proposal is not None and proposal.calls:
                return proposal
        return None


_PRONOUN = re.compile(r"\b(it|them|its)\b", re.IGNORECASE)


def refer_back(registry: Registry, previous: Proposal, part: str, language: str = "en") -> list[str]:
    """'turn on the fan and set it to 70': the part again with the device the previous command named."""
    devices = {c.device for c in previous.calls}
    if len(devices) != 1 or None in devices or not language.startswith("en"):
        return []
    name = next(d.name for d in registry.devices if d.id in devices)
    if _PRONOUN.search(part):
        return [_PRONOUN.sub(lambda m: f"the {name}" + ("'s" if m.group(1).lower() == "its" else ""), part)]
    return [f"{part} on the {name}"]


def _contradicts(parts: list[Proposal]) -> bool:
    """Two parts with the same action on the same target ("the volume is 20, turn it down by 5" read as
    two commands): the split is wrong, the text is one command."""
    keys = [(c.device, c.area, c.type, c.action) for p in parts for c in p.calls]
    return len(keys) != len(set(keys))
