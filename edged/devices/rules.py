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
from edged.devices.slots import Slots, extract
from edged.devices.targets import Plan, choose_action

log = structlog.get_logger("edged.rules")


@dataclass(frozen=True)
class Verb:
    actions: tuple[str, ...]  # in lexicon order; "set" means: the action a value fits
    first: int
    last: int
    weak: bool
    said: frozenset[int]  # the verb's own words ("turn", "off" of "turn the light off")


def _said(phrase: tuple[str, ...], first: int, last: int) -> frozenset[int]:
    if GAP not in phrase:
        return frozenset(range(first, last))
    head, tail = phrase.index(GAP), len(phrase) - phrase.index(GAP) - 1
    return frozenset(range(first, first + head)) | frozenset(range(last - tail, last))


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
    if _unsupported(lex, seq, linking.covered()):
        return [], "unsupported"
    verbs = _verbs(lex, registry, seq, linking.covered())
    if len({v.actions for v in verbs}) > 1:
        return [], "several_verbs"
    verb = verbs[0] if verbs else None
    devices = tuple(m for m in linking.devices if verb is None or verb.first != 0 or not _overlap(m, verb))
    actions = verb.actions if verb else _named_routine(registry, devices)
    slots = extract(lex, linking.words, skip=linking.covered(), verb=_verb_words(verb))
    if _modifier_unlinked(lex, linking, slots.used.union(*(v.said for v in verbs))):
        return [], "unknown_modifier"
    valued = bool(slots.numbers or slots.relative or slots.extreme or slots.color or slots.kelvin)
    if verb is not None and verb.weak and not valued and _statement(lex, linking, verb, slots.used):
        return [], "statement"  # "the kitchen light keeps turning off"
    if _orphan_number(lex, linking, slots, verbs):
        return [], "unknown_value"  # "turn the tv to channel 5"
    plan = Plan.build(registry, command, lex, linking, devices, slots, actions)
    if plan.reason:
        return [], plan.reason
    return choose_action(registry, command, plan, actions)


def _named_routine(registry: Registry, devices: Sequence[Mention]) -> tuple[str, ...]:
    """ "movie night please": a scene or script named alone is activated."""
    kinds = {registry.device(m.ref).type for m in devices}
    return ("activate",) if devices and kinds <= {"scene", "script"} else ()


def _overlap(m: Mention, verb: Verb) -> bool:
    """ "heat the office": a name word that is the verb itself."""
    return bool(set(range(m.first, m.last)) & verb.said)


def _verb_words(verb: Verb | None) -> frozenset[int]:
    return verb.said if verb else frozenset()


def _unsupported(lex: Lexicon, seq: Sequence[str], named: set[int]) -> bool:
    """ "don't", "except", "or", "in ten minutes": outside linked names ("morning routine" is a name)."""
    return any(not set(range(f, la)) & named for p in lex.unsupported for f, la in find_phrase(seq, p))


def _orphan_number(lex: Lexicon, linking: Linking, slots: Slots, verbs: Sequence[Verb]) -> bool:
    """A number right after a word that names nothing known ("channel 5") or right after a kind word
    ("pump 7", when no device is called that): not a value the rules understand."""
    known = linking.covered() | slots.used | set().union(*(v.said for v in verbs))
    kinds = {m.last for m in linking.types}
    for n in slots.numbers:
        if n.first in kinds and n.unit is None:  # "pump 7": a device the home does not have
            return True
        i = n.first - 1
        word = linking.words[i].text if i >= 0 else ""
        current = {w for p in lex.current for w in p}  # "is at 40"
        if i >= 0 and i not in known and word.isalpha() and word not in lex.fillers | lex.absolute | current:
            return True
    return False


def _statement(lex: Lexicon, linking: Linking, verb: Verb, used: frozenset[int]) -> bool:
    """A bare "on"/"off" after "is" ("the big light is on"), or among words that are no part of an order."""
    after_is = verb.first > 0 and linking.words[verb.first - 1].text in lex.questions
    return after_is or _loose_words(lex, linking, used | verb.said)


def _loose_words(lex: Lexicon, linking: Linking, used: frozenset[int]) -> bool:
    """Words that are neither names, values, the verb nor fillers."""
    covered = linking.covered() | used
    return any(i not in covered and w.text not in lex.fillers for i, w in enumerate(linking.words))


def _is_question(lex: Lexicon, seq: Sequence[str]) -> bool:
    first = next((w for w in seq if w not in lex.fillers or w in lex.questions), None)
    return first in lex.questions or bool(seq and seq[-1] in lex.question_endings)


def _phrases(lex: Lexicon, registry: Registry) -> dict[tuple[str, ...], list[str]]:
    table: dict[tuple[str, ...], list[str]] = {}
    for action, phrases in lex.actions.items():
        for p in phrases:
            table.setdefault(p, []).append(action)
    own = {name for d in registry.devices for name in d.all_actions()} - set(lex.actions)
    for name in sorted(own):
        table.setdefault(phrase_words(name.replace("_", " "), lex.language), []).append(name)
    return table


def _verbs(lex: Lexicon, registry: Registry, seq: Sequence[str], named: set[int]) -> list[Verb]:
    """The verbs said: the most verb words first, contiguous before gapped, without overlaps.

    A verb inside a linked name ("send the vacuum home") counts only when no other verb is said and it
    opens the command ("hoover the kitchen").
    """
    hits = [(p, f, la, acts) for p, acts in _phrases(lex, registry).items() for f, la in find_phrase(seq, p)]
    outside = [h for h in hits if not set(range(h[1], h[2])) <= named]
    start = next((i for i, w in enumerate(seq) if w not in lex.fillers), 0)
    hits = outside or [h for h in hits if h[1] == start]  # "hoover the kitchen", not "send the hoover ..."
    hits.sort(key=lambda h: (-(len(h[0]) - (GAP in h[0])), GAP in h[0], h[1]))  # most verb words, contiguous
    chosen: list[Verb] = []
    for phrase, first, last, actions in hits:
        same = next((v for v in chosen if (v.first, v.last) == (first, last)), None)
        if same is not None:
            merged = tuple(dict.fromkeys((*same.actions, *actions)))
            chosen[chosen.index(same)] = Verb(merged, first, last, same.weak, same.said)
        elif not any(v.first < last and first < v.last for v in chosen):
            chosen.append(Verb(tuple(actions), first, last, phrase in lex.weak_verbs, _said(phrase, first, last)))
    strong = [v for v in chosen if not v.weak]
    trailing = [v for v in chosen if v.weak and v.last == len(seq)]  # "turn the light on and off": two orders
    return sorted(strong + trailing if strong else chosen, key=lambda v: v.first)


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
