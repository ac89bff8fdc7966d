"""A broker restart: edged reconnects with backoff, subscribes again and keeps answering."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from conftest import Lent, make_settings
from proc import Mosquitto, free_port

pytestmark = pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs the mosquitto binary")


@pytest.fixture
def private_broker(tmp_path) -> Iterator[Mosquitto]:
    broker = Mosquitto(free_port(), tmp_path)
    broker.start()
    yield broker
    broker.stop()


def test_broker_restart_resubscribes_and_answers(private_broker, engine, tiny_model_dir):
    """After the broker forgets everything, edged reconnects, re-subscribes, republishes online, answers."""
    from edged.app import Daemon
    from edged.bus.client import EdgedClient

    settings = make_settings(
        tiny_model_dir, mqtt={"port": private_broker.port, "reconnect_min_s": 1, "reconnect_max_s": 2}
    )
    daemon = Daemon(settings, lambda _s: Lent(engine))
    daemon.start()
    try:
        assert daemon.ready.wait(15)
        # paho re-sends whatever the old broker had not confirmed (a stale "starting" among it);
        # with everything confirmed first, any status after the restart is edged's own republish
        assert daemon.bus is not None and daemon.bus.wait_confirmed(10)
        private_broker.stop()
        private_broker.start()
        with EdgedClient(daemon.base, port=private_broker.port, timeout=30) as client:
            client.subscribe(f"{daemon.base}/status")
            assert client.wait_for(lambda m: m.topic == f"{daemon.base}/status").json()["state"] == "online"
            result = client.request("command", {"text": "lights on"})
        assert result["status"] == "ok"
        assert daemon.bus is not None and daemon.bus.reconnects == 1
    finally:
        daemon.stop()
