"""The registry in force: the file's devices and areas, plus discovered ones; the file wins, field by field.

A discovered device is the file's device when both have the same id or the same command topic: then
every field the file sets is the file's, actions are the discovered ones with the file's added or
replacing them, and the source reads ``file+zigbee2mqtt``. Two discovered devices on one command topic
(zigbee2mqtt also announcing its devices to Home Assistant) are one device: zigbee2mqtt's description wins.
Areas are matched by id, name or alias (case-insensitive); a room no area matches becomes a new area.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

from edged.devices.discovery.common import UNASSIGNED, Discovered, human, slug
from edged.devices.registry import Area, Device, Registry

SOURCE_ORDER = {"zigbee2mqtt": 0, "homeassistant": 1}


@dataclass(frozen=True)
class Merged:
    registry: Registry
    sources: dict[str, str]  # device id -> "file", "zigbee2mqtt", "homeassistant", "file+zigbee2mqtt", ...


class _Areas:
    def __init__(self, areas: list[Area]):
        self.areas = list(areas)
        self._index = {k.lower(): a.id for a in areas for k in (a.id, a.name, *a.aliases)}

    def resolve(self, name: str | None) -> str:
        if not name:
            return self._add(UNASSIGNED, "Unassigned")
        for key in (name.lower(), slug(name, UNASSIGNED), human(slug(name, UNASSIGNED)).lower()):
            if key in self._index:
                return self._index[key]
        return self._add(slug(name, UNASSIGNED), human(name))

    def _add(self, area_id: str, name: str) -> str:
        if area_id not in {a.id for a in self.areas}:
            self.areas.append(Area(id=area_id, name=name))
            self._index.setdefault(area_id, area_id)
            self._index.setdefault(name.lower(), area_id)
        return area_id


def overlay(found: Device, file: Device) -> Device:
    """``found`` with every field ``file`` sets explicitly; actions merged, the file's on top."""
    data = found.model_dump()
    for name in file.model_fields_set:
        data[name] = getattr(file, name)
    data["actions"] = {**found.actions, **file.actions}
    data["id"] = file.id
    return Device.model_validate(data)


def merge(file: Registry | None, found: Iterable[Discovered], *, name: str = "discovered") -> Merged:
    """One registry from the file's and the discovered devices; raises ValueError if the result is invalid."""
    areas = _Areas(file.areas if file else [])
    by_id = {d.id: d for d in file.devices} if file else {}
    by_topic = {d.command_topic: d.id for d in by_id.values() if d.command_topic}
    devices: dict[str, Device] = dict(by_id)
    sources = dict.fromkeys(by_id, "file")
    claimed: dict[str, str] = {}  # command topic -> the source that described it first
    for item in sorted(found, key=lambda f: (SOURCE_ORDER.get(f.source, 9), f.key)):
        d = item.device
        if claimed.setdefault(d.command_topic or "", item.source) != item.source:
            continue  # the same device described twice (zigbee2mqtt's own Home Assistant discovery)
        located = d.model_copy(update={"area": areas.resolve(item.area_name)})
        match = by_topic.get(d.command_topic or "") or (d.id if d.id in by_id else None)
        if match is not None and sources.get(match) == "file":
            devices[match] = overlay(located, by_id[match])
            sources[match] = f"file+{item.source}"
            continue
        unique = _unique(d.id, devices)
        devices[unique] = located.model_copy(update={"id": unique})
        sources[unique] = item.source
    used = {d.area for d in devices.values()} | {a.id for a in (file.areas if file else [])}
    registry = Registry.model_validate(
        {
            "name": file.name if file else name,
            "areas": [a for a in areas.areas if a.id in used],
            "devices": list(devices.values()),
            "version": _version(file, devices),
        }
    )
    return Merged(registry, sources)


def _unique(device_id: str, taken: dict[str, Device]) -> str:
    if device_id not in taken:
        return device_id
    n = 2
    while f"{device_id[:44]}_{n}" in taken:
        n += 1
    return f"{device_id[:44]}_{n}"


def _version(file: Registry | None, devices: dict[str, Device]) -> str:
    digest = hashlib.sha256((file.version if file else "").encode())
    for device_id in sorted(devices):
        digest.update(json.dumps(devices[device_id].model_dump(mode="json"), sort_keys=True).encode())
    return digest.hexdigest()[:12]
