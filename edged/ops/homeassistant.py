"""Home Assistant MQTT discovery: edged's status and stats as sensors of one device.

Retained config messages on ``{prefix}/sensor/edged_{node_id}/{object}/config``, published on
every connect. The stats sensors are available while ``{base}/status`` (in a shared group
``{base}/status/{node_id}``) says online or
degraded; the state sensor is always available, so it can show ``offline``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

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
SERVING_TEMPLATE = "{{ 'online' if value_json.state in ('online', 'degraded') else 'offline' }}"


def discovery(
    *, prefix: str, topic: Callable[[str], str], node_id: str, model: str, version: str
) -> list[tuple[str, bytes]]:
    """(topic, retained payload) for each sensor; ``topic("status")`` is where edged publishes its status."""
    device = {
        "identifiers": [f"edged_{node_id}"],
        "name": f"edged {node_id}",
        "manufacturer": "edged",
        "model": model,
        "sw_version": version,
    }
    out = []
    for object_id, name, source, template, unit, device_class, state_class in SENSORS:
        config: dict[str, Any] = {
            "name": name,
            "unique_id": f"edged_{node_id}_{object_id}",
            "object_id": f"edged_{node_id}_{object_id}",
            "state_topic": topic(source),
            "value_template": template,
            "device": device,
        }
        if source != "status":
            config["availability"] = [{"topic": topic("status"), "value_template": SERVING_TEMPLATE}]
        for key, value in (("unit_of_measurement", unit), ("device_class", device_class), ("state_class", state_class)):
            if value is not None:
                config[key] = value
        out.append((f"{prefix}/sensor/edged_{node_id}/{object_id}/config", json.dumps(config).encode()))
    return out
