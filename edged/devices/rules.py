"""The rules resolver: one complete action set from the registry, the lexicon and the words, or nothing.

Between sentence templates and the model. It links the devices, areas and device kinds the
command names (:mod:`linking`), reads its values (:mod:`slots`) and its verb (the lexicon, plus the
registry's own action names such as "sound"), and answers only when every part fits: known
targets, one action they all have, values in range. Anything else (a question, a room or device
the home lacks, several devices with no area to choose between them, two verbs, a value out of
range) returns None, and the command goes on to the model or is not understood.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from edged.devices.lexicon import GAP, Lexicon, find_phrase, load_lexicon, phrase_words
from edged.devices.linking import Linking, Mention, link
from edged.devices.proposal import Call, CommandContext, Proposal
from edged.devices.registry import Registry
from edged.devices.targets import Plan, choose_action

log = structlog.get_logger("edged.rules")
WEAK = {("on",), ("off",), ("lights", "on")}  # used only when no other verb is said ("kitchen light on")


@dataclass(frozen=True)
class Verb:
    actions: tuple[str, ...]  # in lexicon order; "set" means: the action a value fits
    first: int
    last: int
    weak: bool


class RulesResolver:
    """Resolves commands by rules over the registry; ``extra_lexicons`` are folders of ``<lang>.toml`` words."""

    def __init__(self, *, extra_lexicons: Iterable[Path] = ()) -> None:
        self.extra_lexicons = tuple(Path(p) for p in extra_lexicons)

    def resolve(self, registry: Registry, command: CommandContext) -> Proposal | None:
        lex = load_lexicon(command.language, self.extra_lexicons)
        linking = link(registry, command, extra_lexicons=self.extra_lexicons)
        calls, reason = _resolve(registry, command, lex, linking)
        if not calls:
            log.debug("rules_pass", reason=reason, words=len(linking.words))
            return None
        log.debug("rules_resolved", actions=len(calls), intent=calls[0].action)
        return Proposal(calls=tuple(calls), resolved_by="rules", intent=calls[0].action)


def _resolve(registry: Registry, command: CommandContext, lex: Lexicon, linking: Linking) -> tuple[list[Call], str]:
    seq = [w.text for w in linking.words]
    if _is_question(lex, seq):
        return [], "question"
    if linking.unlinked:
        return [], "unknown_name"
    verbs = _verbs(lex, registry, seq)
    if len({v.actions for v in verbs}) > 1:
        return [], "several_verbs"
    verb = verbs[0] if verbs else None
    devices = tuple(m for m in linking.devices if verb is None or verb.first != 0 or not _overlap(m, verb))
    plan = Plan.build(registry, command, lex, linking, devices)
    if plan.reason:
        return [], plan.reason
    if _modifier_unlinked(lex, linking, plan.used_words | _verb_words(verb)):
        return [], "unknown_modifier"
    return choose_action(registry, command, plan, verb.actions if verb else ())


def _overlap(m: Mention, verb: Verb) -> bool:
    return m.first < verb.last and verb.first < m.last


def _verb_words(verb: Verb | None) -> frozenset[int]:
    return frozenset(range(verb.first, verb.last)) if verb else frozenset()


def _is_question(lex: Lexicon, seq: Sequence[str]) -> bool:
    first = next((w for w in seq if w not in lex.fillers or w in lex.questions), None)
    return first in lex.questions


def _phrases(lex: Lexicon, registry: Registry) -> dict[tuple[str, ...], list[str]]:
    table: dict[tuple[str, ...], list[str]] = {}
    for action, phrases in lex.actions.items():
        for p in phrases:
            table.setdefault(p, []).append(action)
    own = {name for d in registry.devices for name in d.all_actions()} - set(lex.actions)
    for name in sorted(own):
        table.setdefault(phrase_words(name.replace("_", " "), lex.language), []).append(name)
    return table


def _verbs(lex: Lexicon, registry: Registry, seq: Sequence[str]) -> list[Verb]:
    """The verbs said: contiguous phrases before gapped ones, longer first, without overlaps."""
    hits = [(p, f, la, acts) for p, acts in _phrases(lex, registry).items() for f, la in find_phrase(seq, p)]
    hits.sort(key=lambda h: (GAP in h[0], -(h[2] - h[1]), h[1]))
    chosen: list[Verb] = []
    for phrase, first, last, actions in hits:
        same = next((v for v in chosen if (v.first, v.last) == (first, last)), None)
        if same is not None:
            merged = tuple(dict.fromkeys((*same.actions, *actions)))
            chosen[chosen.index(same)] = Verb(merged, first, last, same.weak)
        elif not any(v.first < last and first < v.last for v in chosen):
            chosen.append(Verb(tuple(actions), first, last, phrase in WEAK))
    strong = [v for v in chosen if not v.weak]
    return sorted(strong or chosen, key=lambda v: v.first)


def _modifier_unlinked(lex: Lexicon, linking: Linking, used: frozenset[int]) -> bool:
    """A word naming something unknown right before a kind word: "the sauna light", "porch lights"."""
    covered = linking.covered() | used
    for m in linking.types:
        i = m.first - 1
        if i >= 0 and i not in covered:
            word = linking.words[i].text
            if word.isalpha() and word not in lex.fillers:
                return True
    return False
