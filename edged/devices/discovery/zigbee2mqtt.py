"""zigbee2mqtt: the retained ``{base}/bridge/devices`` list becomes registry devices.

Each device's ``definition.exposes`` entries of type light, switch, cover, climate, lock or fan (their
``features``) become actions whose payloads go to ``{base}/<friendly_name>/set``; the state topic is
``{base}/<friendly_name>``. Only features with the set bit in ``access`` (0b010) become actions; ranges
come from ``value_min``/``value_max``/``value_step``. Devices without any of these (sensors, remotes,
the coordinator) are left out. A device with several endpoints of one kind (a 2-gang switch) becomes one
registry device per endpoint.

The area: a friendly name ``living_room/ceiling`` puts the device in ``living_room``; otherwise a
device description containing ``area: Kitchen`` (or ``room=Kitchen``) does; otherwise it is unassigned.
"""

from __future__ import annotations

import math
import re
from typing import Any

import structlog

from edged.devices.discovery.common import Discovered, Policy, guarded, human, slug
from edged.devices.registry import TYPE_ACTIONS, Action, Device, Param

log = structlog.get_logger("edged.discovery.zigbee2mqtt")
SOURCE = "zigbee2mqtt"
KINDS = ("light", "switch", "cover", "climate", "lock", "fan")
SETTABLE = 0b010
SETPOINTS = ("occupied_heating_setpoint", "current_heating_setpoint", "occupied_cooling_setpoint")
AREA_IN_TEXT = re.compile(r"\b(?:area|room)\s*[:=]\s*([^;,\n]+)", re.IGNORECASE)
Json = dict[str, Any]


def devices_topic(base: str) -> str:
    return f"{base}/bridge/devices"


def from_bridge_devices(payload: Any, base: str, policy: Policy) -> list[Discovered]:
    """Registry devices for every controllable device in a ``bridge/devices`` payload."""
    if not isinstance(payload, list):
        raise ValueError("bridge/devices must be a JSON array")
    found: list[Discovered] = []
    for entry in payload:
        if not isinstance(entry, dict) or not _usable(entry):
            continue
        try:
            found += _device(entry, base, policy)
        except (KeyError, TypeError, ValueError) as exc:  # one odd definition never hides the others
            log.warning("zigbee2mqtt_device_skipped", friendly_name=entry.get("friendly_name"), error=str(exc))
    return found


def _usable(entry: Json) -> bool:
    return (
        entry.get("type") != "Coordinator"
        and isinstance(entry.get("definition"), dict)
        and entry.get("supported", True) is not False
        and not entry.get("disabled", False)
        and bool(entry.get("friendly_name"))
    )


def area_of(friendly_name: str, description: str | None) -> str | None:
    """The room a friendly name (``room/device``) or a description (``area: room``) names, if any."""
    if "/" in friendly_name:
        return friendly_name.split("/", 1)[0].strip() or None
    match = AREA_IN_TEXT.search(description or "")
    return match.group(1).strip() if match else None


def _device(entry: Json, base: str, policy: Policy) -> list[Discovered]:
    friendly = str(entry["friendly_name"])
    exposes = [e for e in entry["definition"].get("exposes", []) if isinstance(e, dict) and e.get("type") in KINDS]
    area = area_of(friendly, entry.get("description"))
    out = []
    for expose in exposes:
        actions = ACTION_BUILDERS[expose["type"]](_features(expose))
        if not actions:
            continue
        endpoint = expose.get("endpoint")
        ident = slug(friendly if not endpoint or len(exposes) == 1 else f"{friendly}_{endpoint}")
        name = human(friendly) + (f" {endpoint}" if endpoint and len(exposes) > 1 else "")
        kind = expose["type"]
        device = Device(
            id=ident,
            name=name,
            area="unassigned",  # resolved against the registry's areas when merged
            type=kind,
            command_topic=f"{base}/{friendly}/set",
            state_topic=f"{base}/{friendly}",
            actions=guarded(kind, [friendly, name], actions, policy),
            remove_actions=sorted(set(TYPE_ACTIONS[kind]) - set(actions)),
        )
        details = {"ieee_address": str(entry.get("ieee_address", "")), "model": str(entry["definition"].get("model"))}
        out.append(Discovered(device, SOURCE, f"{entry.get('ieee_address', friendly)}:{ident}", area, details))
    return out


def _features(expose: Json) -> dict[str, Json]:
    """Settable features by name (composites such as color_xy count when any sub-feature is settable)."""
    found = {}
    for f in expose.get("features", []):
        subs = f.get("features") or []
        access = f.get("access", 0) if not subs else max((s.get("access", 0) for s in subs), default=0)
        if access & SETTABLE:
            found[f["name"]] = f
    return found


def _number(feature: Json, name: str, *, integer: bool, lo: float, hi: float, unit: str | None = None) -> Param:
    step = float(feature.get("value_step") or (1 if integer else 0.5))
    low = float(feature.get("value_min", lo))
    high = float(feature.get("value_max", hi))
    if not integer:  # registry bounds are whole steps
        low, high = math.ceil(low / step - 1e-9) * step, math.floor(high / step + 1e-9) * step
    if integer:
        return Param(type="integer", min=low, max=high, unit=unit or feature.get("unit"))
    return Param(type="number", min=low, max=high, step=step, unit=unit or feature.get("unit"))


def _on_off(f: Json | None, on: str, off: str) -> dict[str, Action]:
    if f is None:
        return {}
    prop = f["property"]
    return {on: Action(payload={prop: f.get("value_on", "ON")}), off: Action(payload={prop: f.get("value_off", "OFF")})}


def _light(f: dict[str, Json]) -> dict[str, Action]:
    actions = _on_off(f.get("state"), "turn_on", "turn_off")
    state = f.get("state")
    on = {state["property"]: state.get("value_on", "ON")} if state else {}
    if "brightness" in f:
        b = f["brightness"]
        params = {"brightness": _number(b, "brightness", integer=True, lo=0, hi=254)}
        actions["set_brightness"] = Action(params=params, payload={**on, b["property"]: "{brightness}"})
    if "color_temp" in f:
        c = f["color_temp"]
        params = {"color_temp": _number(c, "color_temp", integer=True, lo=150, hi=500, unit="mired")}
        actions["set_color_temp"] = Action(params=params, payload={**on, c["property"]: "{color_temp}"})
    color = f.get("color_hs") or f.get("color_xy")
    if color is not None:
        params = {"hue": Param(type="integer", min=0, max=360), "saturation": Param(type="integer", min=0, max=100)}
        payload = {**on, color.get("property", "color"): {"hue": "{hue}", "saturation": "{saturation}"}}
        actions["set_color"] = Action(params=params, payload=payload)
    return actions


def _switch(f: dict[str, Json]) -> dict[str, Action]:
    return _on_off(f.get("state"), "turn_on", "turn_off")


def _cover(f: dict[str, Json]) -> dict[str, Action]:
    actions: dict[str, Action] = {}
    state = f.get("state")
    if state is not None:
        values = state.get("values") or [state.get("value_on", "OPEN"), state.get("value_off", "CLOSE")]
        for action, value in (("open", "OPEN"), ("close", "CLOSE"), ("stop", "STOP")):
            if value in values:
                actions[action] = Action(payload={state["property"]: value})
    if "position" in f:
        p = f["position"]
        params = {"position": _number(p, "position", integer=True, lo=0, hi=100, unit="%")}
        actions["set_position"] = Action(params=params, payload={p["property"]: "{position}"})
    return actions


def _climate(f: dict[str, Json]) -> dict[str, Action]:
    actions: dict[str, Action] = {}
    setpoint = next((f[n] for n in SETPOINTS if n in f), None)
    if setpoint is not None:
        params = {"setpoint": _number(setpoint, "setpoint", integer=False, lo=5, hi=30, unit="°C")}
        actions["set_temperature"] = Action(params=params, payload={setpoint["property"]: "{setpoint}"})
    mode = f.get("system_mode")
    if mode is not None:
        values = [str(v) for v in mode.get("values", [])]
        if "off" in values:
            actions["turn_off"] = Action(payload={mode["property"]: "off"})
        if values:
            params = {"mode": Param(type="enum", values=values)}
            actions["set_mode"] = Action(params=params, payload={mode["property"]: "{mode}"})
    return actions


def _lock(f: dict[str, Json]) -> dict[str, Action]:
    return _on_off(f.get("state"), "lock", "unlock")


def _fan(f: dict[str, Json]) -> dict[str, Action]:
    actions = _on_off(f.get("state"), "turn_on", "turn_off")
    mode = f.get("mode")
    if mode is not None and mode.get("values"):
        params = {"mode": Param(type="enum", values=[str(v) for v in mode["values"]])}
        actions["set_mode"] = Action(params=params, payload={mode["property"]: "{mode}"})
    return actions


ACTION_BUILDERS = {
    "light": _light,
    "switch": _switch,
    "cover": _cover,
    "climate": _climate,
    "lock": _lock,
    "fan": _fan,
}
