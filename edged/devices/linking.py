"""Entity linking: the areas, devices and device kinds a command names, with spans and scores.

Names and aliases from the registry, and kind words from the lexicon ("lights", "blinds"), are
found in the normalised text exactly or, for names of five letters or more, by fuzzy match
(rapidfuzz, for typos and plurals). Longer matches win over the shorter ones they overlap; a
match with digits must have the same digits ("pump 7" never links "Pump 1"). Room or appliance
words that nothing links are reported, so a resolver can refuse rooms the home lacks; so are
devices the registry does not have although their words are close to one it has: a number no
device carries ("pump 7" next to Pumps 1-3), or another thing of the same head word ("the
washing machine" next to the coffee machine). The same record serves as the grounding
candidates of the model path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rapidfuzz import fuzz

from edged.devices.lexicon import GAP, Lexicon, Word, find_phrase, load_lexicon, normalize, phrase_words, words
from edged.devices.proposal import CommandContext
from edged.devices.registry import Registry

MentionKind = Literal["device", "area", "type", "here", "everywhere"]
FUZZY_MIN = 88.0  # rapidfuzz ratio (0-100) a fuzzy match needs
FUZZY_MIN_CHARS = 5  # shorter names match exactly only
FUZZY_WORD_MIN = 75.0  # each mistyped word must be this close to its name word
HEAD_SCORE = 80.0  # a word of one device's name that no other name, area or kind uses ("the horn")
_RANK = {"device": 0, "area": 1, "type": 2, "here": 3, "everywhere": 3}
_AFTER = ("in", "at", "into")  # "in the sauna": the next word names a place ("on" is too often "turn on")


@dataclass(frozen=True)
class Mention:
    """One linked name: what it refers to, where it is in ``Linking.text``, how well it matched (0-100)."""

    kind: MentionKind
    ref: str  # device id, area id, kind name ("light"), the speaker's area id ("here"), or "all"
    start: int
    end: int
    score: float
    first: int  # word range [first, last) in Linking.words
    last: int

    def overlaps(self, other: Mention) -> bool:
        return self.first < other.last and other.first < self.last


@dataclass(frozen=True)
class Linking:
    """Everything a command names. Mentions of one span with one score are alternatives (ambiguity)."""

    text: str  # the normalised text the spans refer to
    words: tuple[Word, ...]
    devices: tuple[Mention, ...] = ()
    areas: tuple[Mention, ...] = ()
    types: tuple[Mention, ...] = ()
    here: Mention | None = None  # "in here", "this room": ref is the speaker's area id ("" when unknown)
    everywhere: Mention | None = None  # "all", "everything", "the whole house"
    unlinked: tuple[Word, ...] = ()  # room- or appliance-like words no name covers (unknown devices included)
    unknown_devices: tuple[Word, ...] = ()  # devices the registry lacks: "pump 7", "washing machine"

    def covered(self) -> set[int]:
        """Word indices inside a linked mention."""
        found = [*self.devices, *self.areas, *self.types, *(m for m in (self.here, self.everywhere) if m)]
        return {i for m in found for i in range(m.first, m.last)}

    def device_ids(self) -> list[str]:
        return list(dict.fromkeys(m.ref for m in self.devices))


def _digits(seq: Sequence[str]) -> list[str]:
    return [w for w in seq if any(c.isdigit() for c in w)]


def _matches(
    seq: Sequence[str], name: Sequence[str], *, known: frozenset[str] = frozenset()
) -> Iterator[tuple[int, int, float]]:
    """Exact matches score 100; with ``known`` given, fuzzy ones too (word by word, see _near)."""
    if GAP in name:
        return
    for first, last in find_phrase(seq, name):
        yield first, last, 100.0
    joined = " ".join(name)
    if not known or len(joined) < FUZZY_MIN_CHARS:
        return
    for first in range(len(seq) - len(name) + 1):
        window = seq[first : first + len(name)]
        if list(window) == list(name) or not all(_near(w, n, known) for w, n in zip(window, name)):
            continue
        score = fuzz.ratio(" ".join(window), joined)
        if score >= FUZZY_MIN:
            yield first, first + len(name), round(score, 1)


def _near(said: str, name: str, known: frozenset[str]) -> bool:
    """A said word may stand for a name word: equal, a plural, or a typo that is no word of its own
    ("kitchn", never "all" for "hall"); digits must agree ("pump 7" is not "pump 1")."""
    if said == name or said.rstrip("s") == name.rstrip("s"):
        return True
    if said in known or any(c.isdigit() for c in said + name):
        return False
    return fuzz.ratio(said, name) >= FUZZY_WORD_MIN


def _known(registry: Registry, lex: Lexicon) -> frozenset[str]:
    """Words that mean something themselves, so never a typo of another."""
    found = set(lex.fillers) | lex.unknown_nouns | {w for k in lex.kinds.values() for p in k.words for w in p}
    found |= {
        w for table in (lex.actions, lex.colors, lex.up, lex.down) for ps in table.values() for p in ps for w in p
    }
    found |= {w for p in (*lex.here, *lex.everywhere) for w in p}
    names = [n for d in registry.devices for n in (d.name, *d.aliases)]
    names += [n for a in registry.areas for n in (a.name, *a.aliases)]
    return frozenset(found | {w for n in names for w in phrase_words(n, lex.language)})


def _candidates(
    registry: Registry, lex: Lexicon, seq: Sequence[str], area: str | None
) -> tuple[list[Mention], list[tuple[int, int]]]:
    """The mentions, and the spans of head words said of something else ("washing machine")."""
    found: list[tuple[MentionKind, str, int, int, float]] = []
    named: list[tuple[MentionKind, str, list[str]]] = [("device", d.id, [d.name, *d.aliases]) for d in registry.devices]
    named += [("area", a.id, [a.name, *a.aliases]) for a in registry.areas]
    known = _known(registry, lex)
    for kind, ref, names in named:
        for name in names:
            found += [
                (kind, ref, f, la, s) for f, la, s in _matches(seq, phrase_words(name, lex.language), known=known)
            ]
    for k in lex.kinds.values():
        found += [("type", k.name, f, la, s) for p in k.words for f, la, s in _matches(seq, p)]
    found += [("here", area or "", f, la, s) for p in lex.here for f, la, s in _matches(seq, p)]
    found += [("everywhere", "all", f, la, s) for p in lex.everywhere for f, la, s in _matches(seq, p)]
    named_words = {i for _k, _r, f, la, _s in found for i in range(f, la)}
    others: list[tuple[int, int]] = []
    for ref, word in _head_words(registry, lex):
        for f, la in find_phrase(seq, (word,)):
            if f > 0 and f - 1 not in named_words and seq[f - 1].isalpha() and seq[f - 1] not in known:
                others.append((f - 1, la))  # "washing machine": a machine, but not the coffee machine
            else:
                found.append(("device", ref, f, la, HEAD_SCORE))
    return [Mention(kind, ref, 0, 0, score, first, last) for kind, ref, first, last, score in found], others


def _head_words(registry: Registry, lex: Lexicon) -> list[tuple[str, str]]:
    """(device id, word): words of a device's names that name nothing else and are not common words."""
    lang = lex.language
    taken = {w for a in registry.areas for n in (a.name, *a.aliases) for w in phrase_words(n, lang)}
    taken |= {w for k in lex.kinds.values() for p in k.words for w in p} | lex.fillers | lex.unknown_nouns
    taken |= {w for phrases in lex.actions.values() for p in phrases for w in p}  # "lock" is a verb first
    owners: dict[str, set[str]] = {}
    for d in registry.devices:
        for w in {w for n in (d.name, *d.aliases) for w in phrase_words(n, lang)}:
            owners.setdefault(w, set()).add(d.id)
    return [
        (next(iter(ids)), w)
        for w, ids in sorted(owners.items())
        if len(ids) == 1 and w not in taken and w.isalpha() and len(w) >= 4
    ]


def _choose(mentions: list[Mention]) -> list[Mention]:
    """Greedy: longest, best-scored first; a same-span, same-score mention of the same kind is kept too."""
    chosen: list[Mention] = []
    for m in sorted(mentions, key=lambda m: (-(m.last - m.first), -m.score, _RANK[m.kind], m.ref)):
        rivals = [c for c in chosen if c.overlaps(m)]
        tie = all((c.first, c.last, c.score, c.kind) == (m.first, m.last, m.score, m.kind) for c in rivals)
        if (not rivals or tie) and not any(c.ref == m.ref and c.kind == m.kind for c in rivals):
            chosen.append(m)
    return sorted(chosen, key=lambda m: (m.first, _RANK[m.kind], m.ref))


def _with_span(m: Mention, ws: Sequence[Word]) -> Mention:
    return Mention(m.kind, m.ref, ws[m.first].start, ws[m.last - 1].end, m.score, m.first, m.last)


def _unlinked(lex: Lexicon, ws: Sequence[Word], covered: set[int]) -> tuple[Word, ...]:
    loose = {i for i, w in enumerate(ws) if i not in covered and w.text in lex.unknown_nouns}
    for i, w in enumerate(ws):
        if w.text not in _AFTER:
            continue
        j = i + 1 + (i + 1 < len(ws) and ws[i + 1].text in ("the", "a", "my", "our"))
        verbs = {w for phrases in lex.actions.values() for p in phrases for w in p}
        if j < len(ws) and j not in covered and ws[j].text not in lex.fillers | verbs and ws[j].text.isalpha():
            loose.add(j)
    return tuple(ws[i] for i in sorted(loose))


def _numbering_words(registry: Registry, lex: Lexicon) -> set[str]:
    """Words the registry numbers devices by: a name's word before a number ("pump" of "Pump 2"), and
    the kind words ("pump", "valves") of the device types it tells apart by number ("Pump 2", "v1")."""
    heads = set()
    for d in registry.devices:
        for n in (d.name, *d.aliases):
            said = phrase_words(n, lex.language)
            heads |= {a for a, b in zip(said, said[1:]) if b.isdigit()}
    numbered = {d.type for d in registry.devices if any(c.isdigit() for n in (d.name, *d.aliases) for c in n)}
    kinds = {p[0] for k in lex.kinds.values() if numbered & set(k.device_types) for p in k.words if len(p) == 1}
    return heads | kinds


def _numbered(registry: Registry, lex: Lexicon, ws: list[Word]) -> list[Word]:
    """ "pump two" as "pump 2" after a word the registry numbers devices by."""
    heads = _numbering_words(registry, lex)
    out = list(ws)
    for i in range(1, len(out)):
        value = lex.numbers.get(out[i].text)
        if out[i - 1].text in heads and value is not None and value == int(value):
            out[i] = Word(str(int(value)), out[i].start, out[i].end)
    return out


def _unknown_numbers(
    registry: Registry, lex: Lexicon, ws: Sequence[Word], chosen: Sequence[Mention]
) -> list[tuple[int, int]]:
    """ "pump 7", "valve 9": a word the registry numbers its devices by, then a number no device name
    carries (a linked "pump 2" is a device). A unit after the number makes it a value ("fan 2 rpm")."""
    numbered = _numbering_words(registry, lex)
    in_devices = {i for m in chosen if m.kind == "device" for i in range(m.first, m.last)}
    units = {p[0] for phrases in lex.units.values() for p in phrases}
    spans = []
    for i in range(1, len(ws)):
        after = ws[i + 1].text if i + 1 < len(ws) else ""
        if ws[i].text.isdigit() and ws[i - 1].text in numbered and not {i - 1, i} & in_devices and after not in units:
            spans.append((i - 1, i + 1))
    return spans


def _phrase(ws: Sequence[Word], first: int, last: int) -> Word:
    return Word(" ".join(w.text for w in ws[first:last]), ws[first].start, ws[last - 1].end)


def link(registry: Registry, command: CommandContext, *, extra_lexicons: tuple[Path, ...] = ()) -> Linking:
    """The areas, devices and device kinds ``command`` names, by name, alias, plural and typo."""
    lex = load_lexicon(command.language, extra_lexicons)
    text = normalize(command.text, lex.language)
    ws = _numbered(registry, lex, words(text))
    mentions, others = _candidates(registry, lex, [w.text for w in ws], command.area)
    chosen = [_with_span(m, ws) for m in _choose(mentions)]
    by = {kind: tuple(m for m in chosen if m.kind == kind) for kind in _RANK}
    linking = Linking(
        text=text,
        words=tuple(ws),
        devices=by["device"],
        areas=by["area"],
        types=by["type"],
        here=next(iter(by["here"]), None),
        everywhere=next(iter(by["everywhere"]), None),
    )
    covered = linking.covered()
    spans = [(f, la) for f, la in others if not covered & set(range(f, la))]
    unknown = tuple(_phrase(ws, f, la) for f, la in sorted({*spans, *_unknown_numbers(registry, lex, ws, chosen)}))
    unlinked = tuple(sorted({*_unlinked(lex, ws, covered), *unknown}, key=lambda w: (w.start, w.end)))
    return Linking(**{**linking.__dict__, "unlinked": unlinked, "unknown_devices": unknown})


def candidates(
    registry: Registry, linking: Linking, *, language: str = "en", extra_lexicons: tuple[Path, ...] = ()
) -> list[str]:
    """Device ids a command may mean, for grounding the model: named devices, else the named kinds in
    the named areas (anywhere when no area is named), else every device of the named areas."""
    if linking.devices:
        return linking.device_ids()
    lex = load_lexicon(language, extra_lexicons)
    areas = {m.ref for m in linking.areas} | ({linking.here.ref} if linking.here and linking.here.ref else set())
    types = {t for m in linking.types for t in lex.kinds[m.ref].device_types}
    return [
        d.id
        for d in registry.devices
        if (not areas or d.area in areas) and (not types or d.type in types) and (areas or types)
    ]
