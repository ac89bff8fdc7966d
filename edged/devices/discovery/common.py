"""What every discovery source produces: registry devices with where they came from, and the safety policy."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from edged.devices.registry import Action, ConfirmIf, Device

UNASSIGNED = "unassigned"  # the area of a discovered device that names none
RISKY_COVER = re.compile(r"garage|gate|door", re.IGNORECASE)
CONFIRM_SETPOINT_ABOVE = 25.0  # °C: a discovered climate setpoint above this needs confirmation by default


@dataclass(frozen=True)
class Discovered:
    """One device found on the bus. ``key`` identifies it within its source (a retained config topic, an IEEE
    address), so the same device announced again replaces itself; ``area_name`` is the room as the source names it."""

    device: Device
    source: str  # "zigbee2mqtt" | "homeassistant"
    key: str
    area_name: str | None = None
    details: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Policy:
    """Which discovered actions need a person's yes (see docs: safety of discovered devices)."""

    setpoint_above: float = CONFIRM_SETPOINT_ABOVE


def slug(text: str, fallback: str = "device") -> str:
    """A registry id from a name: ``Living room/Ceiling`` -> ``living_room_ceiling`` (``[a-z0-9_]``, ≤ 48)."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    cleaned = re.sub(r"[^a-z0-9]+", "_", ascii_text.lower()).strip("_")[:48].strip("_")
    return cleaned or fallback


def human(text: str) -> str:
    """``living_room_ceiling`` -> ``Living room ceiling``."""
    words = re.sub(r"[_/]+", " ", text).strip()
    return words[:1].upper() + words[1:] if words else text


def guarded(device_type: str, names: list[str], actions: dict[str, Action], policy: Policy) -> dict[str, Action]:
    """The actions with the safety policy applied: locks always ask; covers that sound like a garage, gate or
    door ask before moving; a climate setpoint above the policy's limit asks."""
    out = {}
    for name, action in actions.items():
        if device_type == "lock" or (device_type == "cover" and any(RISKY_COVER.search(n) for n in names)):
            action = action.model_copy(update={"confirm": True})
        elif device_type == "climate" and "setpoint" in action.params and action.confirm_if is None:
            action = action.model_copy(update={"confirm_if": ConfirmIf(param="setpoint", above=policy.setpoint_above)})
        out[name] = action
    return out
