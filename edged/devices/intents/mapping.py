"""Home Assistant intent (and edged's own intents) -> registry action, and slot value -> action parameter.

An intent names what to do in general ("HassTurnOn"); the device type decides the action ("open" for
a cover, "start" for a pump). Every candidate action must be one the device has; a value must fit
the action's only parameter (range, step, enum); otherwise nothing is proposed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from edged.devices.proposal import ParamValue
from edged.devices.registry import Action, Device, Param, on_step

_ON = {
    "cover": "open",
    "valve": "open",
    "lock": "lock",
    "pump": "start",
    "motor": "start",
    "vacuum": "start",
    "scene": "activate",
    "script": "activate",
}
_OFF = {"cover": "close", "valve": "close", "lock": "unlock", "pump": "stop", "motor": "stop", "vacuum": "stop"}


@dataclass(frozen=True)
class IntentRule:
    """Candidate actions (first one the device has wins) and the slot that carries the value, if any."""

    actions: tuple[str, ...] = ()
    slot: str | None = None
    on: bool | None = None  # HassTurnOn / HassTurnOff: the action depends on the device type


RULES: Mapping[str, tuple[IntentRule, ...]] = {
    "HassTurnOn": (IntentRule(on=True),),
    "HassTurnOff": (IntentRule(on=False),),
    "HassLightSet": (
        IntentRule(("set_brightness",), "brightness"),
        IntentRule(("set_color",), "color"),
        IntentRule(("set_color_temp",), "temperature"),
    ),
    "HassSetPosition": (IntentRule(("set_position", "set_opening"), "position"),),
    "HassClimateSetTemperature": (IntentRule(("set_temperature",), "temperature"),),
    "HassFanSetSpeed": (IntentRule(("set_speed",), "percentage"),),
    "HassSetVolume": (IntentRule(("set_volume",), "volume_level"),),
    "HassMediaPause": (IntentRule(("pause",)),),
    "HassMediaUnpause": (IntentRule(("play",)),),
    "HassMediaNext": (IntentRule(("next",)),),
    "HassMediaPrevious": (IntentRule(("previous",)),),
    "HassVacuumStart": (IntentRule(("start",)),),
    "HassVacuumReturnToBase": (IntentRule(("return_to_base",)),),
    "EdgedStart": (IntentRule(("start", "open")),),  # "start the irrigation" opens a valve
    "EdgedStop": (IntentRule(("stop", "close")),),
    "EdgedOpen": (IntentRule(("open",)),),
    "EdgedClose": (IntentRule(("close",)),),
    "EdgedSetSpeed": (IntentRule(("set_speed",), "speed"),),
    "EdgedSetOpening": (IntentRule(("set_position", "set_opening"), "position"),),
}


ACTION_INTENT = "EdgedAction"  # a user template naming the registry action itself: slots {action: ..., value: ...}


def rule_for(intent: str, slots: Mapping[str, object]) -> IntentRule | None:
    """The rule for an intent, picking among value rules by the slot the sentence filled; None: not a command."""
    if intent == ACTION_INTENT:
        action = slots.get("action")
        return IntentRule((action,), "value" if "value" in slots else None) if isinstance(action, str) else None
    for rule in RULES.get(intent, ()):
        if rule.slot is None or rule.slot in slots:
            return rule
    return None


def action_for(rule: IntentRule, device: Device) -> str | None:
    """The action this rule means on this device, or None when the device has none of the candidates."""
    if rule.on is not None:
        candidates: tuple[str, ...] = (
            (_ON if rule.on else _OFF).get(device.type, "turn_on" if rule.on else "turn_off"),
        )
    else:
        candidates = rule.actions
    available = device.all_actions()
    return next((name for name in candidates if name in available), None)


def params_for(action: Action, value: object) -> dict[str, ParamValue] | None:
    """The action's parameters filled with the sentence's value; None when it does not fit."""
    if value is None:
        return {} if not action.params else None
    if len(action.params) != 1:
        return None
    ((name, spec),) = action.params.items()
    checked = check_value(spec, value)
    return None if checked is None else {name: checked}


def check_value(spec: Param, value: object) -> ParamValue | None:
    """The value as the parameter takes it, or None when out of range, off step or not allowed."""
    if spec.type in ("integer", "number"):
        return _check_number(spec, value)
    if spec.type == "enum" and isinstance(value, str):
        return next((v for v in spec.values or [] if v.casefold() == value.casefold()), None)
    if spec.type == "string" and isinstance(value, str) and 0 < len(value) <= spec.max_length:
        return value
    return None


def _check_number(spec: Param, value: object) -> ParamValue | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    if spec.unit and spec.unit.lower().startswith("mired") and number > 1000:  # a colour temperature said in kelvin
        number = float(round(1_000_000 / number))
    assert spec.min is not None and spec.max is not None  # guaranteed by Param
    if not spec.min <= number <= spec.max:
        return None
    if spec.type == "integer":
        return int(number) if number.is_integer() else None
    if not on_step(number, spec.step):
        return None
    return int(number) if number.is_integer() else round(number, 6)
