"""Faults survived with nothing lost and nothing done twice: a broker restart with work in flight, a broker
that stops answering while a result is published, no broker at start-up. Each test prints its tally line.

(A crash of edged itself, SIGKILL mid-generation, is in test_process.py: it needs a real process.)
"""

from __future__ import annotations

import json
import shutil
import signal
import uuid
from collections.abc import Iterator

import pytest
from conftest import Lent, make_settings, share_engine
from proc import Mosquitto, free_port
from tally import Tally, log_events
from test_devices import GREEDY, SMALL

pytestmark = pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs the mosquitto binary")

# A few seconds of generation on the tiny model: a window to act in (the test waits for the progress message).
LONG_THINK = {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "max_tokens": 120, "thinking_budget": 90}


@pytest.fixture
def persistent_broker(tmp_path) -> Iterator[Mosquitto]:
    broker = Mosquitto(free_port(), tmp_path, persistent=True)
    broker.start()
    yield broker
    broker.resume()  # in case a test left it stopped
    broker.stop()


@pytest.fixture
def daemon_on(engine, tiny_model_dir) -> Iterator:
    from edged.app import Daemon

    started = []
    max_batch = engine.scheduler.max_batch

    def start(port: int, *, notifier=None, wait: bool = True, **mqtt) -> Daemon:
        # One query at a time, so that requests queue behind the one generating.
        settings = make_settings(
            tiny_model_dir,
            mqtt={"port": port, "reconnect_min_s": 1, "reconnect_max_s": 2, **mqtt},
            model={"think": LONG_THINK, "scheduler": {"max_batch": 1}},
        )
        share_engine(engine, settings)
        daemon = Daemon(settings, lambda _s: Lent(engine), notifier=notifier)
        started.append(daemon)
        daemon.start()
        if wait:
            assert daemon.ready.wait(30), "daemon did not come online"
        return daemon

    yield start
    for daemon in started:
        daemon.stop()
    engine.scheduler.max_batch = max_batch


def _caller(daemon, broker: Mosquitto):
    """A caller with a persistent session: results published while the broker restarts are kept for it."""
    from edged.bus.client import EdgedClient

    client = EdgedClient(daemon.base, port=broker.port, timeout=120, session_expiry_s=300)
    client.subscribe(f"{daemon.base}/result/+")
    client.subscribe(f"{daemon.base}/progress/+")
    return client


def _generating(client, rid: str) -> None:
    client.wait_for(lambda m: m.topic == f"{client.base}/progress/{rid}")


def test_broker_restart_with_requests_queued_and_one_generating(persistent_broker, daemon_on):
    """(a) The broker restarts (state saved) while one query generates and three wait: each answered exactly once."""
    daemon = daemon_on(persistent_broker.port)
    tally = Tally("broker_restart")
    with log_events() as events, _caller(daemon, persistent_broker) as client:
        ids = [tally.send(client, "query", {"text": f"why is pump {i} vibrating?"}) for i in range(4)]
        _generating(client, ids[0])
        # One generates (max_batch 1, a long think): the other three wait, in edged's queue or still at the broker.
        assert not [rid for rid in ids[1:] if client.messages(f"{daemon.base}/result/{rid}")], "none may be done yet"
        persistent_broker.stop()
        persistent_broker.start()
        events.wait_for("mqtt_connected", session_present=True, timeout=60)
        for rid in ids:
            client.wait_for(lambda m, rid=rid: m.topic == f"{daemon.base}/result/{rid}")
        tally.fence(client)
        tally.count(client)
    assert daemon.bus is not None and daemon.bus.reconnects == 1
    ran = [e["id"] for e in events.of("request_done")]
    assert len(ran) == len(set(ran)), f"a request ran twice: {ran}"
    assert all(a["status"] == "ok" for a in tally.answers)
    tally.assert_exactly_once()


@pytest.mark.parametrize("recovery", ["resume", "restart"])
def test_result_publish_unconfirmed_is_retried_not_lost(persistent_broker, daemon_on, recovery):
    """(c) The broker hangs (SIGSTOP) while a result is published: no PUBACK within publish_timeout_s, the request
    stays unacknowledged. Then it resumes, or dies and restarts from its saved state (the result it never read
    is gone): paho re-sends the result on reconnect. The caller gets it exactly once."""
    daemon = daemon_on(persistent_broker.port, publish_timeout_s=2)
    tally = Tally(f"publish_unconfirmed_{recovery}")
    with log_events() as events, _caller(daemon, persistent_broker) as client:
        rid = tally.send(client, "query", {"text": "why is the compressor short-cycling?"})
        _generating(client, rid)
        persistent_broker.pause()
        events.wait_for("result_unconfirmed", id=rid, timeout=120)
        assert daemon.ledger.state(rid, f"{daemon.base}/result/{rid}") == "done"  # stored, not yet confirmed
        if recovery == "resume":
            persistent_broker.resume()
        else:
            persistent_broker.stop(signal.SIGKILL)
            persistent_broker.start()
            events.wait_for("mqtt_connected", session_present=True, timeout=60)
        client.wait_for(lambda m: m.topic == f"{daemon.base}/result/{rid}")
        tally.fence(client)
        tally.count(client)
    ran = [e["id"] for e in events.of("request_done")]
    assert len(ran) == len(set(ran)), f"a request ran twice: {ran}"
    assert daemon.ledger.state(rid, f"{daemon.base}/result/{rid}") == "sent"
    tally.assert_exactly_once()


def test_broker_unreachable_at_start_up(tmp_path, daemon_on, notify_socket):
    """(d) No broker yet: edged retries with a doubling delay, logs each attempt and says so to systemd;
    once a broker listens on that port it connects and answers."""
    from edged.bus.client import EdgedClient
    from edged.ops.sdnotify import Notifier

    port = free_port()
    tally = Tally("broker_absent_at_start")
    with log_events() as events:
        daemon = daemon_on(port, notifier=Notifier(notify_socket.path), wait=False, reconnect_max_s=4)
        third = events.wait_for("mqtt_connect_failed", attempt=3, timeout=60)
        delays = [e["retry_in_s"] for e in events.of("mqtt_connect_failed")[:3]]
        notify_socket.wait_for("STATUS", f"waiting for the MQTT broker at 127.0.0.1:{port} (attempt 2, next in 2 s)")
        assert not daemon.ready.is_set()
        broker = Mosquitto(port, tmp_path)
        broker.start()
        try:
            assert daemon.ready.wait(60), "edged did not connect once the broker appeared"
            notify_socket.wait_for("READY", "1")
            with EdgedClient(daemon.base, port=port, timeout=120) as client:
                client.subscribe(f"{daemon.base}/result/+")
                rid = tally.send(client, "command", {"text": "lights on"})
                client.wait_for(lambda m: m.topic == f"{daemon.base}/result/{rid}")
                tally.count(client)
        finally:
            daemon.stop()
            broker.stop()
    assert delays == [1, 2, 4] and third["attempt"] == 3
    tally.assert_exactly_once()


def test_copies_of_a_request_are_not_run_twice(start_daemon, client_for):
    """The same id sent again while it runs: acknowledged with the original, one answer. Sent again after the
    answer: the stored result comes back marked replayed, the model does not run again."""
    tally = Tally("resent_copies")
    with log_events() as events:
        daemon = start_daemon(model={"think": LONG_THINK})
        client = client_for(daemon.base, timeout=120)
        client.subscribe(f"{daemon.base}/result/+")
        client.subscribe(f"{daemon.base}/progress/+")
        body = {"id": "same-1", "text": "why is pump 3 vibrating?"}
        tally.send(client, "query", dict(body))
        _generating(client, "same-1")
        client.publish(f"{daemon.base}/query", json.dumps(body))  # a copy while the original runs
        tally.fence(client)
        tally.count(client)
        tally.assert_exactly_once()
        client.publish(f"{daemon.base}/query", json.dumps(body))  # and once more after the answer
        replay = client.wait_for(
            lambda m: m.topic == f"{daemon.base}/result/same-1" and m.json().get("replayed")
        ).json()
    first = tally.answers[0]
    assert replay == {**first, "replayed": True}
    assert [e["verdict"] for e in events.of("duplicate_request")] == ["pending", "replay"]
    assert [e["id"] for e in events.of("request_done")].count("same-1") == 1, "the model ran twice"


def test_a_crash_after_the_dispatch_never_dispatches_again(
    start_daemon, smollm2_dir, smol_engine, client_for, tmp_path
):
    """The crash came after the device command and before the result: the ledger holds the request as taken on
    by the run that died, with its command claimed. The redelivered request is answered; nothing is sent again."""
    from edged.service.ledger import Ledger, ledger_path

    prefix = f"crash-{uuid.uuid4().hex[:8]}"
    registry = tmp_path / "registry.toml"
    registry.write_text(SMALL.read_text().replace("test-devices/", f"{prefix}/"))
    settings = make_settings(
        smollm2_dir,
        model={"path": str(smollm2_dir), "name": "SmolLM2-135M-Instruct", "no_think": GREEDY},
        devices={"registry": str(registry)},
        state_dir=str(tmp_path / "state"),
    )
    rid, reply = "after-dispatch", f"{settings.base}/result/after-dispatch"
    died = Ledger(
        ledger_path(settings.state_dir, settings.client_id), window_s=3600, max_rows=100
    )  # what the dead run left behind
    died.admit(rid, reply, redelivered=False)
    died.claim(rid, reply, [(f"{prefix}/porch_light/set", b'{"state":"ON"}')])
    died.close()
    daemon = start_daemon(settings, use_engine=smol_engine)
    client = client_for(daemon.base, timeout=120)
    client.subscribe(f"{daemon.base}/result/+")
    client.subscribe(f"{prefix}/#")
    tally = Tally("crash_after_dispatch")
    tally.send(client, "command", {"id": rid, "text": "turn on the porch light"})
    result = client.wait_for(lambda m: m.topic == reply).json()
    tally.fence(client)
    tally.count(client)
    assert result["result"]["actions"] and not any(a["dispatched"] for a in result["result"]["actions"]), result
    assert result["result"]["already_dispatched"] == [
        {"topic": f"{prefix}/porch_light/set", "payload": '{"state":"ON"}'}
    ]
    assert not [m for m in client.messages() if m.topic.startswith(prefix + "/")], "a device command went out again"
    tally.assert_exactly_once()
