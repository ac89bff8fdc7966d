"""Home Assistant MQTT discovery for edged itself: one device, announced with device-based discovery.

One retained config on ``{prefix}/device/edged_{node_id}/config`` (``dev``, ``o``rigin, ``cmps``) describes:
- diagnostic sensors (``entity_category: diagnostic``) for the state and the ``{base}/stats`` figures;
- a ``text`` entity: what you type is sent to ``{base}/command``, its result comes back on
  ``{base}/result/homeassistant`` (the request's ``reply_to``);
- an ``event`` entity and a "Last result" sensor on that result topic (event type = the result's status);
- a ``busy`` binary sensor (``{base}/busy``, retained ON/OFF) and a ``problem`` binary sensor (state degraded);
- a reload ``button`` on ``{base}/admin/reload`` when ``admin.reload_topic`` is on.

Entities are available while ``{base}/status`` says online or degraded; the state sensor always is. Every
topic announced is remembered in the state directory, so a config edged no longer announces (discovery
turned off, the node renamed, an entity dropped) is cleared with an empty retained message on the next connect.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger("edged.homeassistant")

SUPPORT_URL = "https://github.com/edged-project/edged"
RESULT_SUFFIX = "result/homeassistant"  # where results of commands sent from Home Assistant go
MEMORY_FILE = "homeassistant-discovery.json"
SERVING_TEMPLATE = "{{ 'online' if value_json.state in ('online', 'degraded') else 'offline' }}"
EVENT_TYPES = ["ok", "needs_confirmation", "rejected", "error", "timeout"]
EVENT_TEMPLATE = (
    "{{ {'event_type': value_json.status, 'id': value_json.id, 'kind': value_json.kind,"
    " 'say': (value_json.result or {}).get('say') or (value_json.error or {}).get('message') or ''} | tojson }}"
)
LEGACY_SENSORS = [  # per-entity configs of earlier versions: cleared once
    "state",
    "uptime",
    "requests",
    "queue_depth",
    "command_p95",
    "query_p95",
    "tokens_per_s",
    "cache_hit_rate",
    "memory",
    "reconnects",
]

# object id, name, source topic, value template, unit, device class, state class
SENSORS: list[tuple[str, str, str, str, str | None, str | None, str | None]] = [
    ("state", "State", "status", "{{ value_json.state }}", None, None, None),
    ("uptime", "Uptime", "stats", "{{ value_json.uptime_s }}", "s", "duration", "measurement"),
    ("requests", "Requests", "stats", "{{ value_json.requests_total }}", None, None, "total_increasing"),
    ("queue_depth", "Queue depth", "stats", "{{ value_json.queue_depth }}", None, None, "measurement"),
    (
        "command_p95",
        "Command latency p95",
        "stats",
        "{{ value_json.latency_ms.command.p95 }}",
        "ms",
        "duration",
        "measurement",
    ),
    (
        "query_p95",
        "Query latency p95",
        "stats",
        "{{ value_json.latency_ms.query.p95 }}",
        "ms",
        "duration",
        "measurement",
    ),
    ("tokens_per_s", "Tokens per second", "stats", "{{ value_json.tokens_per_s }}", "tokens/s", None, "measurement"),
    ("cache_hit_rate", "Prompt cache hit rate", "stats", "{{ value_json.cache_hit_rate }}", None, None, "measurement"),
    (
        "memory",
        "Memory",
        "stats",
        "{{ (value_json.rss_bytes / 1048576) | round(1) }}",
        "MiB",
        "data_size",
        "measurement",
    ),
    ("reconnects", "Broker reconnects", "stats", "{{ value_json.reconnects }}", None, None, "total_increasing"),
]


def config_topic(prefix: str, node_id: str) -> str:
    return f"{prefix}/device/edged_{node_id}/config"


def _sensor(
    uid: str, entity_id: str, name: str, state_topic: str, template: str, extra: dict[str, Any]
) -> dict[str, Any]:
    return {
        "platform": "sensor",
        "name": name,
        "unique_id": uid,
        "default_entity_id": entity_id,
        "state_topic": state_topic,
        "value_template": template,
        "entity_category": "diagnostic",
        **extra,
    }


def components(topic: Callable[[str], str], base: str, node_id: str, *, reload_button: bool) -> dict[str, Any]:
    """The ``cmps`` of edged's device: health sensors, command text, result event and sensor, busy, problem."""
    uid = f"edged_{node_id}"
    eid = uid.replace("-", "_")  # entity ids are [a-z0-9_]; node ids may hold "-"
    available = {"availability": [{"topic": topic("status"), "value_template": SERVING_TEMPLATE}]}
    return {
        **_health(topic, uid, eid, available),
        **_conversation(topic, base, uid, eid, available),
        **_controls(topic, base, uid, eid, available, reload_button=reload_button),
    }


def _health(topic: Callable[[str], str], uid: str, eid: str, available: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for object_id, name, source, template, unit, device_class, state_class in SENSORS:
        extra: dict[str, Any] = {
            k: v for k, v in (("unit_of_measurement", unit), ("device_class", device_class)) if v is not None
        }
        extra.update({"state_class": state_class} if state_class else {})
        extra.update(available if source != "status" else {})
        out[object_id] = _sensor(
            f"{uid}_{object_id}", f"sensor.{eid}_{object_id}", name, topic(source), template, extra
        )
    return out


def _conversation(
    topic: Callable[[str], str], base: str, uid: str, eid: str, available: dict[str, Any]
) -> dict[str, Any]:
    """The command text entity and what shows its answers."""
    results = f"{base}/{RESULT_SUFFIX}"
    out: dict[str, Any] = {}
    out["command"] = {
        "platform": "text",
        "name": "Command",
        "unique_id": f"{uid}_command",
        "default_entity_id": f"text.{eid}_command",
        "command_topic": f"{base}/command",
        "command_template": '{"text": {{ value | tojson }}, "reply_to": "' + results + '"}',
        "max": 255,
        "mode": "text",
        "icon": "mdi:message-text",
        **available,
    }
    out["result_event"] = {
        "platform": "event",
        "name": "Result",
        "unique_id": f"{uid}_result_event",
        "default_entity_id": f"event.{eid}_result",
        "state_topic": results,
        "event_types": EVENT_TYPES,
        "value_template": EVENT_TEMPLATE,
        **available,
    }
    out["last_result"] = {
        "platform": "sensor",
        "name": "Last result",
        "unique_id": f"{uid}_last_result",
        "default_entity_id": f"sensor.{eid}_last_result",
        "state_topic": results,
        "value_template": "{{ value_json.status }}",
        "json_attributes_topic": results,
        "json_attributes_template": "{{ {'id': value_json.id, 'kind': value_json.kind,"
        " 'result': value_json.get('result'), 'error': value_json.get('error'),"
        " 'timing_ms': value_json.get('timing_ms')} | tojson }}",
        **available,
    }
    return out


def _controls(
    topic: Callable[[str], str], base: str, uid: str, eid: str, available: dict[str, Any], *, reload_button: bool
) -> dict[str, Any]:
    """Busy, problem and the reload button."""
    out: dict[str, Any] = {}
    out["busy"] = {
        "platform": "binary_sensor",
        "name": "Busy",
        "unique_id": f"{uid}_busy",
        "default_entity_id": f"binary_sensor.{eid}_busy",
        "state_topic": topic("busy"),
        "payload_on": "ON",
        "payload_off": "OFF",
        "device_class": "running",
        **available,
    }
    out["problem"] = {
        "platform": "binary_sensor",
        "name": "Problem",
        "unique_id": f"{uid}_problem",
        "default_entity_id": f"binary_sensor.{eid}_problem",
        "state_topic": topic("status"),
        "value_template": "{{ 'ON' if value_json.state == 'degraded' else 'OFF' }}",
        "device_class": "problem",
        "entity_category": "diagnostic",
    }
    if reload_button:
        out["reload"] = {
            "platform": "button",
            "name": "Reload configuration",
            "unique_id": f"{uid}_reload",
            "default_entity_id": f"button.{eid}_reload",
            "command_topic": f"{base}/admin/reload",
            "payload_press": "{}",
            "entity_category": "config",
            **available,
        }
    return out


def device_config(
    *,
    topic: Callable[[str], str],
    base: str,
    node_id: str,
    model: str,
    version: str,
    reload_button: bool = False,
) -> dict[str, Any]:
    """The device-based discovery payload for edged on this node."""
    return {
        "device": {
            "identifiers": [f"edged_{node_id}"],
            "name": f"edged {node_id}",
            "manufacturer": "edged",
            "model": model,
            "sw_version": version,
        },
        "origin": {"name": "edged", "sw_version": version, "support_url": SUPPORT_URL},
        "components": components(topic, base, node_id, reload_button=reload_button),
    }


class Announcer:
    """What to publish (retained) on each connect; remembers the config topics it announced in ``state_dir``."""

    def __init__(self, state_dir: Path):
        self._path = Path(state_dir) / MEMORY_FILE
        self._lock = threading.Lock()

    def remembered(self) -> list[str] | None:
        try:
            topics = json.loads(self._path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("homeassistant_memory_unreadable", path=str(self._path), error=str(exc))
            return []
        return [t for t in topics if isinstance(t, str)] if isinstance(topics, list) else []

    def messages(self, *, enabled: bool, prefix: str, node_id: str, config: dict[str, Any]) -> list[tuple[str, bytes]]:
        """Configs when ``enabled``, then an empty payload for each topic announced before and not now."""
        with self._lock:
            before = self.remembered()
            if before is None:  # first run of this version: earlier per-entity configs of this node may be retained
                legacy = [f"{prefix}/sensor/edged_{node_id}/{object_id}/config" for object_id in LEGACY_SENSORS]
                before = legacy if enabled else []  # never touch the prefix of a hub that never used discovery
            now = {config_topic(prefix, node_id): json.dumps(config).encode()} if enabled else {}
            stale = [t for t in before if t not in now]
            self._remember(list(now))
        if stale:
            log.info("homeassistant_discovery_cleared", topics=stale)
        return [*now.items(), *((t, b"") for t in stale)]

    def _remember(self, topics: list[str]) -> None:
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._path.write_text(json.dumps(topics))
        except OSError as exc:
            log.warning("homeassistant_memory_unwritable", path=str(self._path), error=str(exc))


class BusyFlag:
    """``{base}/busy`` (retained ON/OFF): ON from the first request admitted until the last result is out."""

    def __init__(self, publish: Callable[[bool], None]):
        self._publish = publish
        self._running = 0
        self._lock = threading.Lock()

    def started(self) -> None:
        with self._lock:
            self._running += 1
            changed = self._running == 1
        if changed:
            self._publish(True)

    def finished(self) -> None:
        with self._lock:
            if self._running == 0:
                return
            self._running -= 1
            changed = self._running == 0
        if changed:
            self._publish(False)
