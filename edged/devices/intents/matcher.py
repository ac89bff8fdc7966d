"""The local resolver: a command matched against sentence templates, without the model.

Uses hassil with Home Assistant's intents (and the user's templates) and the registry's names as
slot lists. A match becomes a :class:`Proposal` with ``resolved_by="local"``; anything that is not
a command (a question), names nothing the home has, or carries a value the action does not allow
gives None, so the next resolver decides.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import structlog
from hassil import Intents, SlotList, recognize_ranked

from edged.devices.actions import ALL_AREAS
from edged.devices.intents.mapping import IntentRule, action_for, params_for, rule_for
from edged.devices.intents.slots import slot_lists, speaker_context
from edged.devices.intents.targets import Target, find_target
from edged.devices.intents.templates import DEFAULT_SENTENCES_DIR, load_intents, prepare_numbers
from edged.devices.proposal import Call, CommandContext, Proposal
from edged.devices.registry import Device, Registry

log = structlog.get_logger("edged.intents")
_WARM_UP_TEXT = "turn on the light"
MAX_TEXT = 300  # characters: a longer text is no single spoken command, and matching cost grows with length


class IntentResolver:
    """Sentence-template resolver; intents load once per language (``warm_up`` does it before going online)."""

    def __init__(self, sentences_dir: Path | None = DEFAULT_SENTENCES_DIR) -> None:
        self.sentences_dir = sentences_dir
        self._lock = threading.Lock()
        self._intents: dict[str, Intents | None] = {}
        self._lists: tuple[Registry, dict[str, SlotList]] | None = None

    def resolve(self, registry: Registry, command: CommandContext) -> Proposal | None:
        intents = self.intents(command.language)
        if intents is None or not command.text.strip() or len(command.text.strip()) > MAX_TEXT:
            return None
        results = recognize_ranked(
            command.text,
            intents,
            slot_lists=self._slot_lists(registry),
            intent_context=speaker_context(registry, command.area),
            language=intents.language,
            best_slot_name="name",
        )
        for result in results:
            slots = {name: entity.value for name, entity in result.entities.items()}
            rule = rule_for(result.intent.name, slots)
            if rule is None:  # a question or an intent edged does not act on: never look for a lesser reading
                return None
            device_class = result.entities.get("device_class")
            class_word = device_class.text if device_class else ""
            target = find_target(registry, result.intent.name, slots, rule, class_word)
            if target is not None:
                return _propose(registry, result.intent.name, rule, target, slots.get(rule.slot) if rule.slot else None)
        return None

    def intents(self, language: str) -> Intents | None:
        """The templates for a language, loaded on first use; None (logged once) for a language without any."""
        with self._lock:
            if language not in self._intents:
                self._intents[language] = load_intents(language, self.sentences_dir)
                if self._intents[language] is None:
                    log.warning("intents_language_unknown", language=language)
            return self._intents[language]

    def reload(self) -> None:
        """Forget loaded templates (after the user's sentence files change); the next use loads them again."""
        with self._lock:
            self._intents.clear()

    def warm_up(self, registry: Registry, languages: Iterable[str] = ("en",)) -> dict[str, float]:
        """Load each language and recognise a sentence, so the first request is not the slow one; ms per language."""
        timings: dict[str, float] = {}
        for language in languages:
            start = time.perf_counter()
            intents = self.intents(language)
            if intents is not None:
                prepare_numbers(intents)
            self.resolve(registry, CommandContext(text=_WARM_UP_TEXT, language=language))
            timings[language] = round((time.perf_counter() - start) * 1000, 1)
        log.info("intents_warm", ms=timings)
        return timings

    def _slot_lists(self, registry: Registry) -> dict[str, SlotList]:
        cached = self._lists
        if cached is not None and cached[0] is registry:
            return cached[1]
        lists = slot_lists(registry)
        self._lists = (registry, lists)
        return lists


def _propose(registry: Registry, intent: str, rule: IntentRule, target: Target, value: object) -> Proposal | None:
    """One call per target device (folded into area calls where exact); None when a value does not fit."""
    calls: list[Call] = []
    for device in target.devices:
        action = action_for(rule, device)
        params = params_for(device.all_actions()[action], value) if action else None
        if action is None or params is None:
            log.info("intents_value_rejected", intent=intent, device=device.id, value=str(value))
            return None
        calls.append(Call(action=action, params=params, device=device.id))
    grouped = group_calls(registry, calls, target.scope)
    log.info("intents_matched", intent=intent, calls=len(grouped), devices=len(calls))
    return Proposal(calls=tuple(grouped), resolved_by="local", intent=intent)


def group_calls(registry: Registry, calls: list[Call], scope: str | None) -> list[Call]:
    """Device calls folded into area+type calls where the area's devices of that type are exactly these."""
    if scope is None:
        return calls
    by_device = {c.device: c for c in calls}
    grouped: list[Call] = []
    for device_type in dict.fromkeys(registry.device(c.device or "").type for c in calls):
        mine = [c for c in calls if registry.device(c.device or "").type == device_type]
        if _can_group(registry, scope, device_type, mine, by_device):
            first = mine[0]
            grouped.append(Call(action=first.action, params=first.params, area=scope, type=device_type))
        else:
            grouped.extend(mine)
    return grouped


def _can_group(
    registry: Registry, scope: str, device_type: str, mine: list[Call], by_device: Mapping[str | None, Call]
) -> bool:
    actions = {(c.action, tuple(sorted(c.params.items()))) for c in mine}
    if len(actions) != 1:
        return False
    devices: list[Device] = registry.targets(scope, device_type, mine[0].action)
    if [d.id for d in devices] != sorted(c.device or "" for c in mine):
        return False
    if len({repr(d.all_actions()[mine[0].action].params) for d in devices}) != 1:
        return False
    return scope != ALL_AREAS or len({d.area for d in registry.devices if d.type == device_type}) > 1
