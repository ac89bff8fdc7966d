"""Grounding the model path: what the entity linker found in the words, handed to the model first.

When no template or rule resolved a command, the linker still knows which devices and areas the
words name (with scores) and which values they carry ("30 percent"). The model sees those
candidates at the start of the user turn (the registry catalogue stays in the cacheable system
prompt), and when the linking is confident its answer grammar is restricted to them. A command
that names nothing in the registry is refused without the model.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from edged.devices.proposal import CommandContext, ParamValue
from edged.devices.registry import Registry

if TYPE_CHECKING:
    from edged.devices.linking import Linking
    from edged.devices.slots import Slots

log = structlog.get_logger("edged.commands")
MAX_CANDIDATES = 6


@dataclass(frozen=True)
class Grounding:
    """Devices and areas the words name, best first, with scores in 0..1, and the values they carry."""

    devices: tuple[tuple[str, float], ...] = ()
    areas: tuple[tuple[str, float], ...] = ()
    values: Mapping[str, ParamValue] = field(default_factory=dict)  # parameter name -> value
    confident: bool = False  # restrict the answer grammar to these devices and values
    unknown: tuple[str, ...] = ()  # room- or appliance-like words that name nothing here ("sauna")
    unknown_devices: tuple[str, ...] = ()  # of those, devices the registry lacks ("pump 7", "washing machine")
    question: bool = False  # "what is the flow rate of pump 3?": a query, not a command

    @property
    def empty(self) -> bool:
        return not self.devices and not self.areas

    @property
    def names_nothing_here(self) -> bool:
        """No device or area named, a room or appliance the registry does not have, or a question."""
        return self.empty or bool(self.unknown) or self.question

    @property
    def refusal(self) -> str | None:
        """Why the command names nothing here: ``unknown_device``, ``unknown_name``, ``question`` or
        ``nothing_named``; None when it does name something."""
        if self.unknown_devices:
            return "unknown_device"
        if self.unknown:
            return "unknown_name"
        if self.question:
            return "question"
        return "nothing_named" if self.empty else None

    def device_ids(self) -> frozenset[str]:
        return frozenset(d for d, _ in self.devices)

    def area_ids(self) -> frozenset[str]:
        return frozenset(a for a, _ in self.areas)


def ground(registry: Registry, command: CommandContext) -> Grounding | None:
    """The linker's view of ``command``: candidates, values, unknown words; None when linking failed."""
    try:
        from edged.devices.lexicon import load_lexicon
        from edged.devices.linking import link
        from edged.devices.slots import extract
    except ImportError:  # a build without the rules layer
        return word_overlap(registry, command.text)
    try:
        linking = link(registry, command)
        heard = extract(load_lexicon(command.language), linking.words, skip=linking.covered())
    except Exception:
        log.exception("linking_failed", text=command.text)
        return None
    return from_linking(registry, linking, heard, command.area, command.language)


def knows_words_of(language: str) -> bool:
    """True when the linker has this language's words (verbs, kinds, unknown nouns), so that "names
    nothing here" can be trusted; otherwise it reads the text with English words."""
    try:
        from edged.devices.lexicon import load_lexicon
    except ImportError:
        return language.startswith("en")
    return load_lexicon(language).language == language.split("-")[0]


def from_linking(
    registry: Registry, linking: Linking, heard: Slots, area: str | None, language: str = "en"
) -> Grounding:
    """Candidates from the linker's mentions: devices by name, and devices of a named kind in the
    named rooms (else the speaker's, else every room); values heard, matched to parameters by unit."""
    here = linking.here.ref if linking.here is not None and linking.here.ref else area
    areas = {m.ref: m.score / 100 for m in linking.areas} or ({here: 1.0} if here else {})
    devices = {m.ref: m.score / 100 for m in linking.devices}
    named = set(devices)
    kinds = load_kinds(linking, language)
    for kind, score in kinds.items():
        for d in registry.devices:
            if d.type in kind and (not areas or d.area in areas) and d.id not in devices:
                devices[d.id] = round(0.9 * score, 2)
    if not devices and not kinds and linking.areas:  # "dim the hallway to 30 percent": the room's devices
        devices = {d.id: 0.5 for d in registry.devices if d.area in areas}
    ranked = sorted(devices.items(), key=lambda x: -x[1])
    scores = [*devices.values(), *areas.values()]
    rivals = any(a.overlaps(b) for a, b in itertools.combinations(linking.devices, 2))  # one span, two devices
    sure = (bool(named) and not rivals) or bool(kinds and linking.areas)  # a device by name, or a kind in a room
    confident = sure and not linking.unlinked and min(scores) >= 0.9 and len(ranked) <= MAX_CANDIDATES
    return Grounding(
        devices=tuple(ranked[:MAX_CANDIDATES]),
        areas=tuple(areas.items()),
        values=_values(registry, [d for d, _ in ranked[:MAX_CANDIDATES]], heard),
        confident=confident,
        unknown=tuple(w.text for w in linking.unlinked),
        unknown_devices=tuple(w.text for w in linking.unknown_devices),
        question=_asks(linking, language),
    )


def _asks(linking: Linking, language: str) -> bool:
    """The command opens with a question word ("why is pump 3 vibrating?"), fillers aside."""
    from edged.devices.lexicon import load_lexicon

    lex = load_lexicon(language)
    first = next((w.text for w in linking.words if w.text not in lex.fillers or w.text in lex.questions), None)
    return first in lex.questions


def load_kinds(linking: Linking, language: str) -> dict[frozenset[str], float]:
    """Device types each named kind ("lights") covers, with the mention's score."""
    from edged.devices.lexicon import load_lexicon

    lex = load_lexicon(language)
    found: dict[frozenset[str], float] = {}
    for m in linking.types:
        kind = lex.kinds.get(m.ref)
        types = frozenset(kind.device_types) if kind is not None else frozenset({m.ref})
        found[types] = max(found.get(types, 0.0), m.score / 100)
    return found


def _values(registry: Registry, devices: list[str], heard: Slots) -> dict[str, ParamValue]:
    """A target value said with a unit ("to 30 percent") for each parameter of the candidates with that unit."""
    number = heard.value()
    if number is None or not number.absolute:
        return {}
    out: dict[str, ParamValue] = {}
    for d in registry.devices:
        if d.id not in devices:
            continue
        for action in d.all_actions().values():
            for name, p in action.params.items():
                if p.type in ("integer", "number") and (number.unit is None or number.unit == p.unit):
                    out.setdefault(name, int(number.value) if p.type == "integer" else number.value)
    return out


_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_TYPE_WORDS = {
    "light": ("light", "lights", "lamp", "lamps"),
    "dimmer": ("light", "lights", "lamp", "lamps"),
    "cover": ("blind", "blinds", "shade", "shades", "shutter", "shutters"),
    "fan": ("fan", "fans"),
    "climate": ("thermostat", "heating", "heater", "temperature"),
    "media_player": ("speaker", "music", "volume"),
}


def _words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text) if len(w) > 2 or not w.isascii()}


def word_overlap(registry: Registry, text: str) -> Grounding:
    """A plain stand-in linker: devices and areas whose names share whole words with the text."""
    said = _words(text)
    devices = []
    for d in registry.devices:
        names = [d.name, *d.aliases, d.id.replace("_", " ")]
        score = max(len(_words(n) & said) / max(1, len(_words(n))) for n in names)
        typed = bool(said & set(_TYPE_WORDS.get(d.type, ())))
        if score > 0 or typed:
            devices.append((d.id, round(max(score, 0.3 if typed else 0.0), 2)))
    areas = [(a.id, 1.0) for a in registry.areas if any(_words(n) <= said for n in [a.name, *a.aliases] if _words(n))]
    devices.sort(key=lambda x: -x[1])
    return Grounding(tuple(devices[:MAX_CANDIDATES]), tuple(areas), confident=False)


def grounding_text(registry: Registry, grounding: Grounding | None, area: str | None) -> str:
    """The first lines of the user turn: candidates from the words, values heard, where the speaker is."""
    lines = []
    if area:
        lines.append(f"The speaker is in: {area}")
    if grounding is not None and grounding.devices:
        names = {d.id: d.name for d in registry.devices}
        found = ", ".join(f"{d} ({names.get(d, d)}, {s:.2f})" for d, s in grounding.devices)
        lines.append(f"Devices named: {found}")
    if grounding is not None and grounding.areas:
        lines.append("Areas named: " + ", ".join(f"{a} ({s:.2f})" for a, s in grounding.areas))
    if grounding is not None and grounding.values:
        lines.append("Values heard: " + ", ".join(f"{k}={v}" for k, v in grounding.values.items()))
    return "\n".join(lines)
