"""Relative changes ("dim the lights a bit", "a little warmer", "turn it up") computed from device state.

The current value comes from the command itself ("the light is at 40 percent, ...") or from the
device's latest state (``CommandContext.states``: JSON text, or the ``key=value`` summary kept by
:mod:`edged.devices.state`). The change is the number said ("by 5", "20 more") or one STEP of the
parameter (half a step for "a bit"); the result is clamped to the parameter's range. With no known
state, a direction sets a documented default instead (never a guess): DEFAULT_UP / DEFAULT_DOWN.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from edged.devices.registry import Param, on_step
from edged.devices.slots import Slots

# One step of a change, by parameter name (others: a tenth of the parameter's range).
STEP: dict[str, float] = {
    "brightness": 20,
    "volume": 10,
    "setpoint": 1,
    "position": 20,
    "opening": 20,
    "speed": 20,
    "rpm": 200,
    "kelvin": 500,
}
# Without a known state: the value "up" ("brighter", "louder") and "down" ("dim", "quieter") set.
# "Warmer" white light is the DEFAULT_DOWN kelvin, "cooler" the DEFAULT_UP one. A heating setpoint has no default.
DEFAULT_UP: dict[str, float] = {
    "brightness": 80,
    "volume": 40,
    "position": 100,
    "opening": 100,
    "speed": 60,
    "kelvin": 5000,
}
DEFAULT_DOWN: dict[str, float] = {
    "brightness": 30,
    "volume": 20,
    "position": 0,
    "opening": 0,
    "speed": 30,
    "kelvin": 2700,
}
# State keys that hold each parameter's current value (zigbee2mqtt names first).
STATE_KEYS: dict[str, tuple[str, ...]] = {
    "brightness": ("brightness_percent",),
    "volume": ("volume",),
    "setpoint": ("current_heating_setpoint", "occupied_heating_setpoint", "setpoint"),
    "position": ("position",),
    "opening": ("opening", "position"),
    "speed": ("speed",),
    "rpm": ("rpm",),
}
INVERTED = {"kelvin"}  # "warmer" light is a lower colour temperature


@dataclass(frozen=True)
class Change:
    """A parameter's new value and how it was found (for logs and replies)."""

    value: float
    basis: str  # "said", "state", "default", "extreme"


def read_state(state: str | None, param: str) -> float | None:
    """The parameter's current value in a device state text, if it is there."""
    if not state:
        return None
    data: dict[str, object]
    try:
        parsed = json.loads(state)
        data = parsed if isinstance(parsed, dict) else {}
    except ValueError:
        pairs = (part.split("=", 1) for part in state.split(",") if "=" in part)
        data = {k.strip(): v.strip() for k, v in pairs}
    if param == "kelvin" and "color_temp" in data:
        mireds = _float(data["color_temp"])
        return round(1_000_000 / mireds) if mireds else None
    if param == "brightness" and "brightness_percent" not in data and "brightness" in data:
        raw = _float(data["brightness"])
        return None if raw is None else round(raw * 100 / 254)
    return next((v for k in STATE_KEYS.get(param, (param,)) if (v := _float(data.get(k))) is not None), None)


def _float(value: object) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _step(name: str, param: Param) -> float:
    return STEP.get(name, ((param.max or 0) - (param.min or 0)) / 10)


def _fit(value: float, param: Param) -> float:
    lo, hi = float(param.min or 0), float(param.max or 0)
    value = min(max(value, lo), hi)
    if param.type == "integer":
        return float(round(value))
    return round(round(value / param.step) * param.step, 6)


def _delta(name: str, param: Param, slots: Slots) -> float:
    said = slots.value()
    size = said.value if said is not None and not said.absolute else _step(name, param) / (2 if slots.small else 1)
    return size if _up(name, slots) else -size


def _up(name: str, slots: Slots) -> bool:
    return (slots.direction == "up") != (name in INVERTED and slots.dimension == "temperature")


def change(name: str, param: Param, slots: Slots, state: str | None) -> Change | None:
    """The new value of numeric parameter ``name`` for a relative or extreme command, or None."""
    lo, hi = float(param.min or 0), float(param.max or 0)
    if slots.extreme is not None:
        value = {"max": hi, "min": lo, "half": (lo + hi) / 2}[slots.extreme]
        return Change(_fit(value, param), "extreme")
    current = slots.current.value if slots.current is not None else read_state(state, name)
    basis = "said" if slots.current is not None else "state"
    if slots.factor is not None:
        return None if current is None else Change(_fit(current * slots.factor, param), basis)
    if slots.direction is None:
        return None
    if current is None:
        if slots.value() is not None:  # "turn it up by 5" needs the value now: no default
            return None
        table = DEFAULT_UP if _up(name, slots) else DEFAULT_DOWN
        return Change(_fit(table[name], param), "default") if name in table else None
    return Change(_fit(current + _delta(name, param, slots), param), basis)


def within(value: float, param: Param) -> bool:
    """True when an absolute value is allowed as it is (no clamping of values people say)."""
    if param.min is None or param.max is None or not param.min <= value <= param.max:
        return False
    return value == int(value) if param.type == "integer" else on_step(value, param.step)
