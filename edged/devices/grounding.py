"""Grounding the model path: what the entity linker found in the words, handed to the model first.

When no template or rule resolved a command, the linker still knows which devices and areas the
words name (with scores) and which values they carry ("30 percent"). The model sees those
candidates at the start of the user turn (the registry catalogue stays in the cacheable system
prompt), and when the linking is confident its answer grammar is restricted to them. A command
that names nothing in the registry is refused without the model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import structlog

from edged.devices.proposal import CommandContext, ParamValue
from edged.devices.registry import Registry

log = structlog.get_logger("edged.commands")
MAX_CANDIDATES = 6


@dataclass(frozen=True)
class Grounding:
    """Devices and areas the words name, best first, with scores in 0..1, and the values they carry."""

    devices: tuple[tuple[str, float], ...] = ()
    areas: tuple[tuple[str, float], ...] = ()
    values: Mapping[str, ParamValue] = field(default_factory=dict)  # parameter name -> value
    confident: bool = False  # restrict the answer grammar to these devices and values

    @property
    def empty(self) -> bool:
        return not self.devices and not self.areas

    def device_ids(self) -> frozenset[str]:
        return frozenset(d for d, _ in self.devices)

    def area_ids(self) -> frozenset[str]:
        return frozenset(a for a, _ in self.areas)


def ground(registry: Registry, command: CommandContext) -> Grounding | None:
    """The linker's view of ``command``; None when no linker is available (then the model sees no candidates)."""
    try:
        from edged.devices.linking import link  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return word_overlap(registry, command.text)
    try:
        linking = link(registry, command)
    except Exception:
        log.exception("linking_failed", text=command.text)
        return None
    return from_linking(linking)


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


def from_linking(linking: object) -> Grounding:
    """Adapt the linker's record (``edged.devices.linking.Linking``) to what the model path needs."""
    devices = tuple(getattr(linking, "devices", ()))[:MAX_CANDIDATES]
    areas = tuple(getattr(linking, "areas", ()))[:MAX_CANDIDATES]
    values = dict(getattr(linking, "values", {}) or {})
    return Grounding(
        devices=tuple((str(d), float(s)) for d, s in devices),
        areas=tuple((str(a), float(s)) for a, s in areas),
        values=values,
        confident=bool(getattr(linking, "confident", False)),
    )


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
