"""A flood: 10,000 requests at once to one `edged run` with a small queue. Every request gets exactly
one result (ok, or busy for the overflow), the process's memory stays bounded, and it still answers after.

Back-pressure: edged's MQTT 5 Receive Maximum (`mqtt.receive_maximum`) caps how many requests the
broker has in flight to it; the rest wait at the broker, so the private broker here raises Mosquitto's
`max_queued_messages` (default 1000, beyond which Mosquitto drops QoS 1 messages for a slow client).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from collections import Counter

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from proc import Edged, Mosquitto, free_port, quick_work, write_config

from edged.bus.client import EdgedClient

pytestmark = pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs the mosquitto binary")

FLOOD = 10_000
QUEUE_SIZE = 4
MAX_RSS_GROWTH_MB = 150  # generous; the figure is printed


def cpu_s(pid: int) -> float:
    """User + system CPU time a process has used."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vm_kib(pid: int, field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of a process, in KiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def publish_all(port: int, topic: str, payloads: list[bytes], *, window: int = 500, timeout: float = 60) -> None:
    """Publish at QoS 1 as fast as the broker acknowledges them, ``window`` in flight, until all are acknowledged.

    paho's own in-flight limit is off: with it, each acknowledgement rescans every queued message.
    """
    slots = threading.Semaphore(window)
    done = threading.Event()
    acked = [0]

    def on_publish(*_args) -> None:
        acked[0] += 1
        slots.release()
        if acked[0] == len(payloads):
            done.set()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"flood-{uuid.uuid4().hex[:8]}", protocol=MQTTProtocolVersion.MQTTv5
    )
    client.max_inflight_messages_set(0)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for payload in payloads:
            assert slots.acquire(timeout=timeout), f"the broker stopped acknowledging after {acked[0]} publishes"
            client.publish(topic, payload, qos=1)
        assert done.wait(timeout), f"the broker acknowledged {acked[0]} of {len(payloads)} publishes"
    finally:
        client.disconnect()
        client.loop_stop()


def test_flood_is_answered_busy_with_bounded_memory(tmp_path, tiny_model_dir):
    broker = Mosquitto(free_port(), tmp_path, "allow_anonymous true\nmax_queued_messages 20000\n")
    broker.start()
    node = f"flood-{uuid.uuid4().hex[:8]}"
    config = write_config(tmp_path / "edged.toml", tiny_model_dir, node, quick_work(QUEUE_SIZE))
    edged = Edged(config, tmp_path / "edged.log", env={"EDGED_MQTT__PORT": str(broker.port)})
    base = f"edged/{node}"
    try:
        with EdgedClient(base, port=broker.port, timeout=60) as c:
            c.subscribe(f"{base}/status")
            c.wait_for(lambda m: m.topic == f"{base}/status" and m.json()["state"] == "online", timeout=120)
            assert c.request("command", {"text": "warm up"})["status"] == "ok"
            rss_idle_kib, cpu_before = vm_kib(edged.proc.pid, "VmRSS"), cpu_s(edged.proc.pid)
            first = c.count()
            ids = [f"f{i}" for i in range(FLOOD)]
            started = time.monotonic()
            publish_all(
                broker.port, f"{base}/command", [json.dumps({"id": i, "text": "lights on"}).encode() for i in ids]
            )
            published_s = time.monotonic() - started
            c.nth(first + FLOOD - 1, timeout=90)  # FLOOD more results arrived
            answered_s = time.monotonic() - started
            after = c.request("command", {"text": "still there?"})
            peak_kib, cpu = vm_kib(edged.proc.pid, "VmHWM"), cpu_s(edged.proc.pid) - cpu_before
            wanted = {f"{base}/result/{i}" for i in ids}  # not startswith: a generated id may begin with f too
            results = [m.json() for m in c.messages() if m.topic in wanted]
        per_id = Counter(r["id"] for r in results)
        statuses = Counter(r["status"] if r["status"] == "ok" else r["error"]["code"] for r in results)
        growth_mb = (peak_kib - rss_idle_kib) / 1024
        print(
            f"\nflood: {FLOOD} requests published in {published_s:.1f} s, all answered after {answered_s:.1f} s "
            f"(edged used {cpu:.1f} s CPU): {dict(statuses)}"
        )
        print(
            f"flood: edged RSS idle {rss_idle_kib / 1024:.1f} MiB, peak {peak_kib / 1024:.1f} MiB "
            f"(+{growth_mb:.1f} MiB), queue_size {QUEUE_SIZE}, receive_maximum 64"
        )
        assert set(per_id) == set(ids), f"{len(set(ids) - set(per_id))} requests unanswered"
        assert max(per_id.values()) == 1, "a request was answered twice"
        assert set(statuses) <= {"ok", "busy"} and statuses["busy"] > 0 and statuses["ok"] >= QUEUE_SIZE
        assert after["status"] == "ok"
        assert growth_mb < MAX_RSS_GROWTH_MB
    finally:
        assert edged.stop() == 0
        broker.stop()
