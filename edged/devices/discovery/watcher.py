"""Reads discovery messages off the bus and hands what they describe to the store."""

from __future__ import annotations

import json
from collections.abc import Sequence

import structlog

from edged.devices.discovery import homeassistant, zigbee2mqtt
from edged.devices.discovery.common import Policy
from edged.devices.discovery.store import DiscoveringStore

log = structlog.get_logger("edged.discovery")


class DiscoveryWatcher:
    """``topics()`` to subscribe (retained wanted); ``receive()`` for each message on them (network thread)."""

    def __init__(
        self,
        store: DiscoveringStore,
        sources: Sequence[str],
        *,
        zigbee2mqtt_base: str = "zigbee2mqtt",
        homeassistant_prefix: str = "homeassistant",
        policy: Policy | None = None,
    ):
        self.store = store
        self.sources = tuple(sources)
        self.z2m_topic = zigbee2mqtt.devices_topic(zigbee2mqtt_base)
        self.z2m_base = zigbee2mqtt_base
        self.ha_prefix = homeassistant_prefix
        self.policy = policy or Policy()

    def topics(self) -> list[str]:
        out = [self.z2m_topic] if "zigbee2mqtt" in self.sources else []
        return out + (homeassistant.subscriptions(self.ha_prefix) if "homeassistant" in self.sources else [])

    def handles(self, topic: str) -> bool:
        if "zigbee2mqtt" in self.sources and topic == self.z2m_topic:
            return True
        return "homeassistant" in self.sources and topic.startswith(self.ha_prefix + "/") and topic.endswith("/config")

    def receive(self, topic: str, payload: bytes) -> None:
        """Never raises: a malformed announcement is logged and changes nothing."""
        try:
            body = json.loads(payload) if payload.strip() else None
            if topic == self.z2m_topic:
                found = zigbee2mqtt.from_bridge_devices(body or [], self.z2m_base, self.policy)
                self.store.replace(zigbee2mqtt.SOURCE, "bridge", found)
            elif body is None:  # an empty retained config removes the entity
                self.store.replace(homeassistant.SOURCE, topic, [])
            elif isinstance(body, dict):
                found = homeassistant.from_config(topic, body, self.ha_prefix, self.policy)
                self.store.replace(homeassistant.SOURCE, topic, found)
            else:
                raise ValueError("a discovery config must be a JSON object")
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("discovery_message_ignored", topic=topic, error=str(exc))
