"""The device registry: areas, devices, their actions with typed bounded parameters, topics, safety policy.

Loaded from TOML and validated strictly. A device type brings default actions (zigbee2mqtt-style
payloads) that the file may override or extend per device.
"""

from __future__ import annotations

import hashlib
import re
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = structlog.get_logger("edged.registry")
ID = r"^[a-z0-9][a-z0-9_]{0,47}$"
DeviceType = Literal[
    "light",
    "switch",
    "dimmer",
    "color_light",
    "climate",
    "cover",
    "lock",
    "fan",
    "media_player",
    "valve",
    "pump",
    "motor",
    "vacuum",
    "scene",
    "script",
    "generic",
]
# Colour names a colour light accepts, with the RGB value its payload carries (zigbee2mqtt ``color.hex``).
COLOR_HEX: dict[str, str] = {
    "red": "#FF0000",
    "orange": "#FF8000",
    "yellow": "#FFE000",
    "green": "#00FF00",
    "cyan": "#00FFFF",
    "blue": "#0000FF",
    "purple": "#8000FF",
    "pink": "#FF60B0",
    "white": "#FFFFFF",
    "warm_white": "#FFD8A8",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


ParamType = Literal["integer", "number", "boolean", "enum", "string"]


class Param(_Strict):
    type: ParamType
    min: float | None = None
    max: float | None = None
    step: float = Field(0.1, ge=0.001, description="number: the precision of values (bounds are multiples of it)")
    values: list[str] | None = None  # enum
    max_length: int = Field(48, ge=1, le=200)  # string
    unit: str | None = None

    @model_validator(mode="after")
    def _bounds(self) -> Param:
        if self.type in ("integer", "number") and (self.min is None or self.max is None or self.min > self.max):
            raise ValueError("integer and number parameters need min <= max")
        if self.type == "enum" and not self.values:
            raise ValueError("enum parameters need values")
        if self.type == "number" and not (on_step(self.min, self.step) and on_step(self.max, self.step)):
            raise ValueError(f"number bounds must be multiples of step {self.step}")
        return self

    @property
    def bounds(self) -> tuple[float, float]:
        """``(min, max)`` of an integer or number parameter (validation makes sure both are set)."""
        if self.min is None or self.max is None:
            raise ValueError(f"a {self.type} parameter has no bounds")
        return self.min, self.max

    @property
    def choices(self) -> list[str]:
        """The values of an enum parameter (validation makes sure there are some)."""
        return self.values or []


def on_step(value: float | None, step: float) -> bool:
    """True when ``value`` is a whole number of ``step``s (to 1e-6 of a step)."""
    return value is not None and abs(value / step - round(value / step)) < 1e-6


class ConfirmIf(_Strict):
    """Ask for confirmation when a parameter goes above (or below) a limit."""

    param: str
    above: float | None = None
    below: float | None = None


class Derive(_Strict):
    """A payload value computed from a parameter: ``hex`` (colour name -> "#RRGGBB"), ``mireds`` (kelvin -> mired)."""

    fn: Literal["hex", "mireds"]
    param: str


def _derived(fn: str, value: Any) -> Any:
    if fn == "hex":
        return COLOR_HEX[str(value)]
    return round(1_000_000 / float(value))


class Action(_Strict):
    params: dict[str, Param] = {}
    payload: dict[str, Any] | str = Field(description='MQTT payload; "{name}" strings are replaced by parameter values')
    topic: str | None = Field(None, description="default: the device's command_topic")
    confirm: bool = False
    confirm_if: ConfirmIf | None = None
    derive: dict[str, Derive] = Field({}, description='extra "{name}" values computed from parameters')

    @model_validator(mode="after")
    def _confirm_param(self) -> Action:
        if self.confirm_if is not None and self.confirm_if.param not in self.params:
            raise ValueError(f"confirm_if names unknown parameter {self.confirm_if.param!r}")
        if self.confirm_if is not None and self.params[self.confirm_if.param].type not in ("integer", "number"):
            raise ValueError(f"confirm_if needs an integer or number parameter, not {self.confirm_if.param!r}")
        for name, d in self.derive.items():
            if d.param not in self.params or name in self.params:
                raise ValueError(f"derive {name!r} must be a new name computed from a parameter of the action")
        return self

    def template_values(self, params: dict[str, Any]) -> dict[str, Any]:
        """The values a payload template is filled with: the parameters and the values derived from them."""
        return {**params, **{name: _derived(d.fn, params[d.param]) for name, d in self.derive.items()}}


def _p(kind: ParamType, lo: float, hi: float, unit: str | None = None) -> Param:
    return Param(type=kind, min=lo, max=hi, unit=unit)


_ON_OFF = {"turn_on": Action(payload={"state": "ON"}), "turn_off": Action(payload={"state": "OFF"})}
_DIMMER = {
    **_ON_OFF,
    "set_brightness": Action(
        params={"brightness": _p("integer", 0, 100, "%")},
        payload={"state": "ON", "brightness_percent": "{brightness}"},
    ),
}
_ACTIVATE = {"activate": Action(payload={"state": "ON"})}
CLEAN_AREA = "clean_area"  # a vacuum's action for one of its ``zones`` (see Device.zones)
TYPE_ACTIONS: dict[str, dict[str, Action]] = {
    "light": _ON_OFF,
    "switch": _ON_OFF,
    "dimmer": _DIMMER,
    "color_light": {
        **_DIMMER,
        "set_color": Action(
            params={"color": Param(type="enum", values=list(COLOR_HEX))},
            payload={"state": "ON", "color": {"hex": "{color_hex}"}},
            derive={"color_hex": Derive(fn="hex", param="color")},
        ),
        "set_color_temp": Action(
            params={"kelvin": _p("integer", 2000, 6500, "K")},
            payload={"state": "ON", "color_temp": "{mireds}"},
            derive={"mireds": Derive(fn="mireds", param="kelvin")},
        ),
    },
    "climate": {
        "set_temperature": Action(
            params={"setpoint": _p("number", 5, 30, "°C")},
            payload={"current_heating_setpoint": "{setpoint}"},
            confirm_if=ConfirmIf(param="setpoint", above=25),
        ),
        "turn_off": Action(payload={"system_mode": "off"}),
    },
    "cover": {
        "open": Action(payload={"state": "OPEN"}),
        "close": Action(payload={"state": "CLOSE"}),
        "set_position": Action(params={"position": _p("integer", 0, 100, "%")}, payload={"position": "{position}"}),
    },
    "lock": {"lock": Action(payload={"state": "LOCK"}), "unlock": Action(payload={"state": "UNLOCK"}, confirm=True)},
    "fan": {**_ON_OFF, "set_speed": Action(params={"speed": _p("integer", 0, 100, "%")}, payload={"speed": "{speed}"})},
    "media_player": {
        **_ON_OFF,
        "next": Action(payload={"state": "NEXT"}),
        "previous": Action(payload={"state": "PREVIOUS"}),
        "play": Action(payload={"state": "PLAY"}),
        "pause": Action(payload={"state": "PAUSE"}),
        "set_volume": Action(params={"volume": _p("integer", 0, 100, "%")}, payload={"volume": "{volume}"}),
    },
    "valve": {
        "open": Action(payload={"state": "OPEN"}, confirm=True),
        "close": Action(payload={"state": "CLOSE"}),
        "set_position": Action(
            params={"position": _p("integer", 0, 100, "%")}, payload={"position": "{position}"}, confirm=True
        ),
    },
    "pump": {
        "start": Action(payload={"run": True}, confirm=True),
        "stop": Action(payload={"run": False}),
        "set_speed": Action(params={"speed": _p("integer", 0, 100, "%")}, payload={"speed": "{speed}"}, confirm=True),
    },
    "motor": {
        "start": Action(payload={"run": True}, confirm=True),
        "stop": Action(payload={"run": False}),
        "set_speed": Action(params={"rpm": _p("integer", 0, 3000, "rpm")}, payload={"rpm": "{rpm}"}, confirm=True),
    },
    "vacuum": {
        "start": Action(payload={"state": "START"}),
        "stop": Action(payload={"state": "STOP"}),
        "return_to_base": Action(payload={"state": "RETURN_TO_BASE"}),
    },
    "scene": _ACTIVATE,
    "script": _ACTIVATE,
    "generic": {},
}


def _clean_area(zones: list[str]) -> Action:
    return Action(params={"area": Param(type="enum", values=zones)}, payload={"state": "CLEAN", "area": "{area}"})


class Area(_Strict):
    id: str = Field(pattern=ID)
    name: str
    aliases: list[str] = []


class Device(_Strict):
    id: str = Field(pattern=ID)
    name: str
    aliases: list[str] = []
    area: str
    type: DeviceType
    command_topic: str | None = None
    state_topic: str | None = None
    actions: dict[str, Action] = Field({}, description="added to, or replacing, the type's default actions")
    remove_actions: list[str] = []
    zones: list[str] = Field([], description="vacuum: the area ids it can clean, the values of its clean_area action")

    @field_validator("command_topic", "state_topic")
    @classmethod
    def _topic(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(c in v for c in "+#\0")):
            raise ValueError("topics must be non-empty, without wildcards")
        return v

    @model_validator(mode="after")
    def _zones(self) -> Device:
        if self.zones and self.type != "vacuum":
            raise ValueError(f"device {self.id!r}: only a vacuum has zones")
        return self

    def all_actions(self) -> dict[str, Action]:
        typed = {**TYPE_ACTIONS[self.type], **({CLEAN_AREA: _clean_area(self.zones)} if self.zones else {})}
        merged = {**typed, **self.actions}
        return {name: a for name, a in sorted(merged.items()) if name not in self.remove_actions}


class Registry(_Strict):
    name: str
    areas: list[Area]
    devices: list[Device]
    version: str = ""  # content hash, set by load_registry

    @model_validator(mode="after")
    def _consistent(self) -> Registry:
        area_ids = [a.id for a in self.areas]
        device_ids = [d.id for d in self.devices]
        for what, ids in (("area", area_ids), ("device", device_ids)):
            dupes = {i for i in ids if ids.count(i) > 1}
            if dupes:
                raise ValueError(f"duplicate {what} ids: {sorted(dupes)}")
        for d in self.devices:
            if d.area not in area_ids:
                raise ValueError(f"device {d.id!r} is in unknown area {d.area!r}")
            if set(d.zones) - set(area_ids):
                raise ValueError(
                    f"device {d.id!r} has zones that are not areas: {sorted(set(d.zones) - set(area_ids))}"
                )
            if not d.all_actions():
                raise ValueError(f"device {d.id!r} has no actions")
            for name in d.all_actions():
                if not re.fullmatch(ID, name):
                    raise ValueError(f"device {d.id!r}: action name {name!r} must match {ID}")
        return self

    def device(self, device_id: str) -> Device:
        return next(d for d in self.devices if d.id == device_id)

    def topics(self) -> set[str]:
        """Every topic that drives or reports a device: command topics (per action too) and state topics."""
        found = {t for d in self.devices for t in (d.command_topic, d.state_topic) if t}
        return found | {a.topic for d in self.devices for a in d.all_actions().values() if a.topic}

    def targets(self, area: str, device_type: str, action: str) -> list[Device]:
        """Devices an area+type target means, in a fixed order; area "all" means every area."""
        return [
            d
            for d in sorted(self.devices, key=lambda d: d.id)
            if (area == "all" or d.area == area) and d.type == device_type and action in d.all_actions()
        ]


def load_registry(path: Path) -> Registry:
    """Read and validate a registry file; raises ValueError (pydantic ValidationError) or OSError."""
    raw = path.read_bytes()
    data = tomllib.loads(raw.decode("utf-8"))
    data["version"] = hashlib.sha256(raw).hexdigest()[:12]
    return Registry.model_validate(data)


class RegistryStore:
    """The registry in force, reloaded when its file changes; an invalid edit keeps the old one."""

    def __init__(self, path: Path, *, on_change: Callable[[Registry], None] = lambda _r: None):
        self.path = path
        self._on_change = on_change
        self._lock = threading.Lock()
        self._stamp = self._file_stamp()
        self.current = load_registry(path)
        self.last_error: str | None = None

    def _file_stamp(self) -> tuple[int, int]:
        st = self.path.stat()
        return st.st_mtime_ns, st.st_size

    def get(self) -> Registry:
        """The current registry, after picking up a changed file."""
        try:
            stamp = self._file_stamp()
        except OSError:
            return self.current
        if stamp != self._stamp:
            self.reload(stamp)
        return self.current

    def reload(self, stamp: tuple[int, int] | None = None) -> bool:
        with self._lock:
            self._stamp = stamp or self._file_stamp()
            try:
                fresh = load_registry(self.path)
            except (OSError, ValueError) as exc:
                self.last_error = str(exc)
                log.error("registry_reload_failed", path=str(self.path), error=str(exc), kept=self.current.version)
                return False
            self.current, self.last_error = fresh, None
        log.info("registry_loaded", path=str(self.path), version=fresh.version, devices=len(fresh.devices))
        self._on_change(fresh)
        return True

    def state_topics(self) -> dict[str, str]:
        return {d.state_topic: d.id for d in self.current.devices if d.state_topic}
