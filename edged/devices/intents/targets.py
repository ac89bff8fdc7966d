"""What a matched sentence points at: one device by name, the devices of a kind in an area, or everywhere.

"Turn on the lights" with no known speaker room is matched against a marker area (``ANYWHERE``);
it resolves only when the home has exactly one device of that kind, and otherwise passes the
command on to the next resolver.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

from edged.devices.actions import ALL_AREAS
from edged.devices.intents.mapping import IntentRule, action_for
from edged.devices.intents.slots import ANYWHERE, ha_domain
from edged.devices.registry import Device, Registry

# The domain an intent acts on when the sentence names none ("pause" -> media players).
INTENT_DOMAINS: Mapping[str, str] = {
    "HassLightSet": "light",
    "HassClimateSetTemperature": "climate",
    "HassFanSetSpeed": "fan",
    "HassSetVolume": "media_player",
    "HassMediaPause": "media_player",
    "HassMediaUnpause": "media_player",
    "HassMediaNext": "media_player",
    "HassMediaPrevious": "media_player",
    "HassVacuumStart": "vacuum",
    "HassVacuumReturnToBase": "vacuum",
}
TYPE_SLOT = "edged_type"  # edged templates name a device type: "stop the pumps in {area}"


@dataclass(frozen=True)
class Target:
    """Devices to act on; ``scope`` is the area id (or "all") when the sentence named a kind, not a device."""

    devices: tuple[Device, ...]
    scope: str | None = None


def find_target(
    registry: Registry, intent: str, slots: Mapping[str, object], rule: IntentRule, class_word: str = ""
) -> Target | None:
    """The devices a sentence's slots point at that can do what the rule asks; None when there are none.

    ``class_word`` is what the speaker called a cover ("blinds", "garage door"): only covers whose
    name or an alias contains it are meant.
    """
    name = slots.get("name")
    area = slots.get("area")
    if isinstance(name, str):
        device = next((d for d in registry.devices if d.id == name), None)
        if device is None or action_for(rule, device) is None:
            return None
        if isinstance(area, str) and area not in (ANYWHERE, ALL_AREAS, device.area):
            return None
        return Target((device,))
    wanted = _kind(intent, slots)
    if wanted is None:
        return None
    scope = area if isinstance(area, str) else ALL_AREAS
    devices = tuple(
        d
        for d in sorted(registry.devices, key=lambda d: d.id)
        if _is_kind(d, wanted)
        and scope in (ANYWHERE, ALL_AREAS, d.area)
        and action_for(rule, d) is not None
        and (not class_word or _called(d, class_word))
    )
    if not devices:
        return None
    if scope == ANYWHERE:
        return Target(devices) if len(devices) == 1 else None
    return Target(devices, scope)


def _kind(intent: str, slots: Mapping[str, object]) -> tuple[str, str] | None:
    """("type", edged type) or ("domain", HA domain) the sentence asks for."""
    edged_type = slots.get(TYPE_SLOT)
    if isinstance(edged_type, str):
        return ("type", edged_type)
    domain = slots.get("domain", INTENT_DOMAINS.get(intent))
    return ("domain", domain) if isinstance(domain, str) else None


def _is_kind(device: Device, wanted: tuple[str, str]) -> bool:
    key, value = wanted
    return device.type == value if key == "type" else ha_domain(device.type) == value


def _fold(text: str) -> str:
    """Case and accents folded ("Rollläden" and "Rollladen" compare equal)."""
    decomposed = unicodedata.normalize("NFKD", text.strip().casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _called(device: Device, word: str) -> bool:
    """True when the device's name or an alias contains the word (or, for longer words, its stem)."""
    folded = _fold(word)
    forms = {folded} | ({folded[:-1], folded[:-2]} if len(folded) > 3 else set())
    names = [_fold(n) for n in (device.name, *device.aliases)]
    return any(form and form in name for form in forms for name in names)
