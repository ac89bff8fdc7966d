"""Values said in a command: which single-parameter action a value fits, and the value it sets.

A colour fits an enum that has it, a kelvin value a K parameter, a number a numeric parameter with a
compatible unit (a number without unit fits any but kelvin); relative words narrow by what they are
about ("louder" -> volume). Said values must be in range and on step, never clamped; relative ones
come from :mod:`edged.devices.relative`.
"""

from __future__ import annotations

from collections.abc import Sequence

from edged.devices.proposal import ParamValue
from edged.devices.registry import CLEAN_AREA, Device, Param
from edged.devices.relative import change, within
from edged.devices.slots import Slots

UNIT_OK = {"%": {"%", None}, "°C": {"°C", None}, "rpm": {"rpm", None}, "s": {"s", None}}
# What relative words are about, as parameter names.
DIMENSION = {
    "brightness": {"brightness"},
    "volume": {"volume"},
    "temperature": {"setpoint", "kelvin"},
    "speed": {"speed", "rpm"},
    "position": {"position", "opening"},
}
OPENING = {"position", "opening"}  # the parameters "open ... to 30 percent" means


def fits(pname: str, param: Param, slots: Slots) -> bool:
    if slots.color is not None:
        return param.type == "enum" and slots.color in (param.values or [])
    if param.type not in ("integer", "number"):
        return False
    if slots.kelvin is not None:
        return param.unit == "K"
    if param.unit == "K" and slots.dimension != "temperature":
        return False
    said = slots.value()
    if said is not None and said.unit is not None and said.unit not in UNIT_OK.get(param.unit or "", {None}):
        return False
    return slots.dimension is None or pname in DIMENSION.get(slots.dimension, {pname})


def valued_action(
    device: Device, slots: Slots, words: Sequence[str], verb: Sequence[str]
) -> tuple[str, str, Param] | None:
    """The one action of ``device`` with a single parameter that the said value fits."""
    options = [
        (name, pname, p)
        for name, a in device.all_actions().items()
        if len(a.params) == 1 and name != CLEAN_AREA
        for pname, p in a.params.items()
        if fits(pname, p, slots)
    ]
    for narrow in (
        lambda o: o[0] in verb,
        lambda o: o[1] in words,
        lambda o: o[0] in device.actions,
        lambda o: o[1] in OPENING and bool({"open", "close"} & set(verb)),
    ):
        if len(options) > 1 and any(narrow(o) for o in options):
            options = [o for o in options if narrow(o)]
    return options[0] if len(options) == 1 else None


def value_for(pname: str, param: Param, slots: Slots, state: str | None) -> ParamValue | None:
    if slots.color is not None:
        return slots.color
    if slots.kelvin is not None:
        return slots.kelvin if within(slots.kelvin, param) else None
    said = slots.value()
    if slots.relative or slots.extreme is not None:
        if said is not None and said.absolute and slots.factor is None:
            return _absolute(said.value, param)
        found = change(pname, param, slots, state)
        return None if found is None else _typed(found.value, param)
    return None if said is None else _absolute(said.value, param)


def _absolute(value: float, param: Param) -> ParamValue | None:
    return _typed(value, param) if within(value, param) else None


def _typed(value: float, param: Param) -> ParamValue:
    return int(value) if param.type == "integer" or value == int(value) else value


def has_value(slots: Slots) -> bool:
    return bool(slots.numbers or slots.color or slots.kelvin or slots.relative or slots.extreme)


def open_close(device: Device, slots: Slots) -> str | None:
    """ "raise the blinds", "lower the shades": open or close when no amount is said."""
    if slots.direction is None or slots.numbers or slots.small or slots.extreme:
        return None
    name = "open" if slots.direction == "up" else "close"
    return name if name in device.all_actions() else None
