"""Devices discovered on the bus (zigbee2mqtt, Home Assistant MQTT discovery), merged with the registry file."""

from __future__ import annotations

from collections.abc import Callable

from edged.devices.discovery.common import Policy
from edged.devices.discovery.store import DiscoveringStore
from edged.devices.discovery.watcher import DiscoveryWatcher
from edged.devices.registry import Registry, RegistryStore
from edged.settings import DeviceSettings


def open_registry(
    s: DeviceSettings, *, on_change: Callable[[Registry], None]
) -> tuple[RegistryStore | None, DiscoveryWatcher | None]:
    """The registry store the settings ask for (file, discovered devices, both, or none) and its discovery watcher."""
    if not s.discover:
        return (RegistryStore(s.registry, on_change=on_change) if s.registry else None), None
    store = DiscoveringStore(s.registry, on_change=on_change)
    watcher = DiscoveryWatcher(
        store,
        s.discover,
        zigbee2mqtt_base=s.zigbee2mqtt_base,
        homeassistant_prefix=s.homeassistant_prefix,
        policy=Policy(setpoint_above=s.confirm_setpoint_above),
    )
    return store, watcher
