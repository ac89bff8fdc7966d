"""`edged run` under systemd's notify protocol: readiness, status lines, watchdog, stopping, on a real NOTIFY_SOCKET."""

from __future__ import annotations

import json
import signal
import time
import uuid

from proc import RUN_TIMEOUT, Edged, write_config


def test_ready_only_once_model_loaded_and_subscribed_then_watchdog_then_stopping(
    broker, tiny_model_dir, tmp_path, client_for, notify_socket
):
    """STATUS lines while starting, READY=1 when requests are answered, WATCHDOG=1 at half WATCHDOG_USEC, STOPPING=1."""
    node_id = f"sd-{uuid.uuid4().hex[:10]}"
    base = f"edged/{node_id}"
    config = write_config(tmp_path / "edged.toml", tiny_model_dir, node_id)
    client = client_for(base, timeout=RUN_TIMEOUT)
    client.subscribe(f"{base}/result/+")
    client.subscribe(f"{base}/status")
    started = time.monotonic()
    edged = Edged(config, tmp_path / "edged.log", env={"NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "2000000"})
    try:
        ready = notify_socket.wait_for("READY", "1", timeout=RUN_TIMEOUT)
        ready_s = notify_socket.messages[ready][0] - started
        statuses = [m["STATUS"] for _, m in notify_socket.messages[:ready] if "STATUS" in m]
        assert statuses[0].startswith("connecting to MQTT") and any(s.startswith("loading model") for s in statuses)
        # When READY=1 arrives the retained status is online and a request is answered at once.
        assert client.wait_for(lambda m: m.topic == f"{base}/status" and m.json()["state"] == "online", timeout=5)
        assert client.request("command", {"text": "lights on"}, timeout=30)["status"] == "ok"

        first = notify_socket.wait_for("WATCHDOG", "1", after=ready)
        second = notify_socket.wait_for("WATCHDOG", "1", after=first + 1)
        gap = notify_socket.messages[second][0] - notify_socket.messages[first][0]
        assert 0.5 < gap < 2.0, f"pings every WATCHDOG_USEC/2 = 1 s, got {gap:.2f} s"

        assert edged.stop(signal.SIGTERM) == 0
        stopping = notify_socket.wait_for("STOPPING", "1", after=ready, timeout=5)
        assert notify_socket.messages[stopping][1]["STATUS"].startswith("stopping")
    finally:
        if edged.proc.poll() is None:
            edged.stop(signal.SIGKILL)
    online = [e for e in edged.events() if e["event"] == "online"]
    assert len(online) == 1
    print(json.dumps({"start_to_ready_s": round(ready_s, 2)}))
