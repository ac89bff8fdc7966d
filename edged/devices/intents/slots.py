"""Registry -> hassil slot lists: the words for areas and devices that sentence templates match.

Device names carry the Home Assistant domain of their type as match context, so a template for
lights ("turn on {name} light") only matches light names, and the edged device type, so edged's
own templates can ask for pumps or motors.
"""

from __future__ import annotations

from collections.abc import Mapping

from hassil import SlotList, TextSlotList, TextSlotValue
from hassil.expression import TextChunk

from edged.devices.registry import Device, Registry

# edged device type -> Home Assistant domain (the word the shared templates ask for).
HA_DOMAINS: Mapping[str, str] = {
    "light": "light",
    "dimmer": "light",
    "color_light": "light",
    "colour_light": "light",
    "switch": "switch",
    "cover": "cover",
    "lock": "lock",
    "fan": "fan",
    "climate": "climate",
    "media_player": "media_player",
    "valve": "valve",
    "vacuum": "vacuum",
    "scene": "scene",
    "script": "script",
    "pump": "switch",
    "motor": "switch",
    "generic": "switch",
}
ANYWHERE = "__anywhere__"  # the "area" context when the speaker's room is unknown (see targets.py)
TYPE_KEY = "edged_type"  # context key with the edged device type, for edged's own templates


def ha_domain(device_type: str) -> str:
    """The Home Assistant domain for an edged device type (types added later fall back by name)."""
    if device_type in HA_DOMAINS:
        return HA_DOMAINS[device_type]
    return "light" if "light" in device_type else "switch"


def _value(text: str, out: str, context: dict[str, str] | None = None) -> TextSlotValue:
    return TextSlotValue(text_in=TextChunk(text), value_out=out, context=context)


def _device_values(device: Device) -> list[TextSlotValue]:
    context = {"domain": ha_domain(device.type), TYPE_KEY: device.type}
    return [_value(word, device.id, context) for word in _words(device.name, device.aliases)]


def _words(name: str, aliases: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for word in (name, *aliases):
        if word.strip():
            seen.setdefault(word.strip(), None)
    return list(seen)


def slot_lists(registry: Registry) -> dict[str, SlotList]:
    """``area`` (value: area id), ``name`` (value: device id) and an empty ``floor`` list."""
    areas = [_value(word, a.id) for a in registry.areas for word in _words(a.name, a.aliases)]
    names = [v for d in registry.devices for v in _device_values(d)]
    return {
        "area": TextSlotList(name="area", values=areas),
        "name": TextSlotList(name="name", values=names),
        "floor": TextSlotList(name="floor", values=[]),
    }


def speaker_context(registry: Registry, area_id: str | None) -> dict[str, object]:
    """hassil intent context: the speaker's area, or a marker that templates like "turn on the lights" may use."""
    area = next((a for a in registry.areas if a.id == area_id), None)
    if area is None:
        return {"area": {"value": ANYWHERE, "text": ""}}
    return {"area": {"value": area.id, "text": area.name}}
