"""Home Assistant MQTT discovery: retained entity configs with a command topic become registry devices.

Topics read: ``{prefix}/<component>/<object_id>/config``, ``{prefix}/<component>/<node_id>/<object_id>/config``
and device-based ``{prefix}/device/<id>/config`` whose ``cmps`` (components) each carry a platform ``p``.
Abbreviated keys (``cmd_t``, ``stat_t``, ``dev``, ``sa``, ...) are expanded, and a leading or trailing
``~`` in a topic is replaced by the config's ``~`` base. The device's ``suggested_area`` gives the area.
Entities edged publishes itself (origin ``edged``, unique ids ``edged_*``) are ignored.
"""

from __future__ import annotations

from typing import Any

from edged.devices.discovery.common import Discovered, Policy, guarded, human, slug
from edged.devices.registry import TYPE_ACTIONS, Action, Device, Param

SOURCE = "homeassistant"
PLATFORMS = ("light", "switch", "cover", "lock", "fan", "climate", "valve", "button")
Json = dict[str, Any]

ABBREVIATIONS = {
    "avty_t": "availability_topic",
    "bri_cmd_t": "brightness_command_topic",
    "bri_scl": "brightness_scale",
    "clr_temp_cmd_t": "color_temp_command_topic",
    "cmd_t": "command_topic",
    "cmps": "components",
    "dev": "device",
    "dev_cla": "device_class",
    "ent_cat": "entity_category",
    "max_mirs": "max_mireds",
    "min_mirs": "min_mireds",
    "mode_cmd_t": "mode_command_topic",
    "mode_stat_t": "mode_state_topic",
    "o": "origin",
    "p": "platform",
    "pct_cmd_t": "percentage_command_topic",
    "pl_cls": "payload_close",
    "pl_lock": "payload_lock",
    "pl_off": "payload_off",
    "pl_on": "payload_on",
    "pl_open": "payload_open",
    "pl_prs": "payload_press",
    "pl_stop": "payload_stop",
    "pl_unlk": "payload_unlock",
    "pos_clsd": "position_closed",
    "pos_open": "position_open",
    "set_pos_t": "set_position_topic",
    "spd_rng_max": "speed_range_max",
    "spd_rng_min": "speed_range_min",
    "stat_t": "state_topic",
    "temp_cmd_t": "temperature_command_topic",
    "temp_stat_t": "temperature_state_topic",
    "unit_of_meas": "unit_of_measurement",
    "val_tpl": "value_template",
    "uniq_id": "unique_id",
}
DEVICE_ABBREVIATIONS = {"ids": "identifiers", "mf": "manufacturer", "mdl": "model", "sa": "suggested_area"}


def subscriptions(prefix: str) -> list[str]:
    return [f"{prefix}/+/+/config", f"{prefix}/+/+/+/config"]


def expand(config: Json, abbreviations: dict[str, str] = ABBREVIATIONS) -> Json:
    """Full key names, and ``~`` expanded in every topic (``~/set`` -> ``<base>/set``)."""
    full = {abbreviations.get(k, k): v for k, v in config.items()}
    base = full.get("~")
    if isinstance(base, str):
        for key, value in full.items():
            if key.endswith("topic") and isinstance(value, str):
                full[key] = (
                    base + value[1:] if value.startswith("~") else value[:-1] + base if value.endswith("~") else value
                )
    if isinstance(full.get("device"), dict):
        full["device"] = {DEVICE_ABBREVIATIONS.get(k, k): v for k, v in full["device"].items()}
    return full


def from_config(topic: str, payload: Json, prefix: str, policy: Policy) -> list[Discovered]:
    """Registry devices for one retained config message (several for a device-based config)."""
    parts = topic[len(prefix) + 1 :].split("/")
    config = expand(payload)
    if _own(config):
        return []
    if parts[0] == "device":
        shared = {k: v for k, v in config.items() if k not in ("components", "device", "origin")}
        found = []
        for cid, component in (config.get("components") or {}).items():
            if isinstance(component, dict):
                entity = {**shared, **expand(component), "device": config.get("device") or {}}
                entity = expand(entity) if "~" in entity else entity
                found += _entity(str(entity.get("platform", "")), f"{topic}#{cid}", entity, policy)
        return found
    return _entity(parts[0], topic, config, policy)


def _own(config: Json) -> bool:
    origin = config.get("origin") or {}
    return (isinstance(origin, dict) and origin.get("name") == "edged") or str(config.get("unique_id", "")).startswith(
        "edged_"
    )


def _entity(platform: str, key: str, c: Json, policy: Policy) -> list[Discovered]:
    builder = ACTION_BUILDERS.get(platform)
    actions = builder(c) if builder is not None else {}
    command = c.get("command_topic")
    command = command if isinstance(command, str) else next((a.topic for a in actions.values() if a.topic), None)
    if not actions or command is None:
        return []
    device = c.get("device") or {}
    entity_name = c.get("name")
    base_name = str(device.get("name") or "")
    name = " ".join(p for p in (base_name, entity_name if isinstance(entity_name, str) else "") if p).strip()
    name = name or human(str(c.get("unique_id") or key.split("/")[-2]))
    kind = "generic" if platform == "button" else platform
    registry_device = Device(
        id=slug(name),
        name=name,
        area="unassigned",
        type=kind,
        command_topic=command,
        state_topic=c.get("state_topic") if isinstance(c.get("state_topic"), str) else None,
        actions=guarded(kind, [name, str(c.get("unique_id", "")), str(c.get("device_class", ""))], actions, policy),
        remove_actions=sorted(set(TYPE_ACTIONS[kind]) - set(actions)),
    )
    area = device.get("suggested_area")
    details = {"unique_id": str(c.get("unique_id", "")), "platform": platform}
    return [Discovered(registry_device, SOURCE, key, area if isinstance(area, str) else None, details)]


def _on_off(c: Json, on: str = "turn_on", off: str = "turn_off") -> dict[str, Action]:
    return {on: Action(payload=str(c.get("payload_on", "ON"))), off: Action(payload=str(c.get("payload_off", "OFF")))}


def _light(c: Json) -> dict[str, Action]:
    if c.get("schema") == "json":
        actions = {"turn_on": Action(payload={"state": "ON"}), "turn_off": Action(payload={"state": "OFF"})}
        if c.get("brightness"):
            scale = int(c.get("brightness_scale", 255))
            params = {"brightness": Param(type="integer", min=0, max=scale)}
            actions["set_brightness"] = Action(params=params, payload={"state": "ON", "brightness": "{brightness}"})
        return actions
    actions = _on_off(c)
    if isinstance(c.get("brightness_command_topic"), str):
        params = {"brightness": Param(type="integer", min=0, max=int(c.get("brightness_scale", 255)))}
        actions["set_brightness"] = Action(params=params, payload="{brightness}", topic=c["brightness_command_topic"])
    if isinstance(c.get("color_temp_command_topic"), str):
        lo, hi = int(c.get("min_mireds", 153)), int(c.get("max_mireds", 500))
        params = {"color_temp": Param(type="integer", min=lo, max=hi, unit="mired")}
        actions["set_color_temp"] = Action(params=params, payload="{color_temp}", topic=c["color_temp_command_topic"])
    return actions


def _switch(c: Json) -> dict[str, Action]:
    return _on_off(c)


def _cover(c: Json) -> dict[str, Action]:
    actions = {
        "open": Action(payload=str(c.get("payload_open", "OPEN"))),
        "close": Action(payload=str(c.get("payload_close", "CLOSE"))),
    }
    if c.get("payload_stop", "STOP") is not None:
        actions["stop"] = Action(payload=str(c.get("payload_stop", "STOP")))
    if isinstance(c.get("set_position_topic"), str):
        lo, hi = int(c.get("position_closed", 0)), int(c.get("position_open", 100))
        params = {"position": Param(type="integer", min=min(lo, hi), max=max(lo, hi), unit="%")}
        actions["set_position"] = Action(params=params, payload="{position}", topic=c["set_position_topic"])
    return actions


def _lock(c: Json) -> dict[str, Action]:
    return {
        "lock": Action(payload=str(c.get("payload_lock", "LOCK"))),
        "unlock": Action(payload=str(c.get("payload_unlock", "UNLOCK"))),
    }


def _fan(c: Json) -> dict[str, Action]:
    actions = _on_off(c)
    if isinstance(c.get("percentage_command_topic"), str):
        lo, hi = int(c.get("speed_range_min", 1)), int(c.get("speed_range_max", 100))
        params = {"speed": Param(type="integer", min=lo, max=hi)}
        actions["set_speed"] = Action(params=params, payload="{speed}", topic=c["percentage_command_topic"])
    return actions


def _climate(c: Json) -> dict[str, Action]:
    """A climate entity is listed under its ``temperature_command_topic`` (HA climate has no ``command_topic``)."""
    actions: dict[str, Action] = {}
    topic = c.get("temperature_command_topic")
    if isinstance(topic, str):
        step = float(c.get("temp_step", 0.5))
        lo = float(c.get("min_temp", 7)) // step * step
        hi = float(c.get("max_temp", 35)) // step * step
        params = {"setpoint": Param(type="number", min=lo, max=hi, step=step, unit="°C")}
        actions["set_temperature"] = Action(params=params, payload="{setpoint}", topic=topic)
    modes = c.get("modes")
    if isinstance(c.get("mode_command_topic"), str) and isinstance(modes, list) and "off" in modes:
        actions["turn_off"] = Action(payload="off", topic=c["mode_command_topic"])
    return actions


def _valve(c: Json) -> dict[str, Action]:
    return {
        "open": Action(payload=str(c.get("payload_open", "OPEN"))),
        "close": Action(payload=str(c.get("payload_close", "CLOSE"))),
    }


def _button(c: Json) -> dict[str, Action]:
    return {"press": Action(payload=str(c.get("payload_press", "PRESS")))}


ACTION_BUILDERS = {
    "light": _light,
    "switch": _switch,
    "cover": _cover,
    "lock": _lock,
    "fan": _fan,
    "climate": _climate,
    "valve": _valve,
    "button": _button,
}
