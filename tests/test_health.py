"""Health on the bus and for systemd: the retained status through its states, and a stuck worker."""

from __future__ import annotations

import threading
import uuid

import pytest
from conftest import Lent, make_settings
from standins import StandInEngine

from edged.engine.types import Done, Generation, GenerationRequest
from edged.ops.sdnotify import Notifier


class HungEngine(StandInEngine):
    """Blocks inside submit() without reporting a token: a model that hangs, until released."""

    name = "hung-engine"
    supports_thinking = True

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def submit(self, request: GenerationRequest, on_done: Done) -> None:
        self.entered.set()
        self.release.wait(60)
        on_done(
            Generation(
                answer="done",
                reasoning=None,
                prompt_tokens=3,
                completion_tokens=1,
                reasoning_tokens=0,
                prefill_ms=1.0,
                decode_ms=1.0,
                finish_reason="stop",
            )
        )


@pytest.fixture
def hung_daemon(broker, tiny_model_dir, notify_socket):
    from edged.app import Daemon

    engine = HungEngine()
    settings = make_settings(
        tiny_model_dir, health={"stuck_after_s": 0.3, "check_interval_s": 0.05}, model={"warm_up": False}
    )  # a warm-up would hang in this engine before online
    daemon = Daemon(settings, lambda _s: engine, notifier=Notifier(notify_socket.path))
    daemon.start()
    yield daemon, engine
    engine.release.set()
    daemon.stop()


def test_a_stuck_worker_stops_the_watchdog_and_turns_status_degraded(hung_daemon, client_for, notify_socket):
    """No token for stuck_after_s: status degraded (retained), WATCHDOG=1 stops; progress again: online,
    pings resume."""
    daemon, engine = hung_daemon
    assert daemon.ready.wait(15)
    c = client_for(daemon.base)
    c.subscribe(f"{daemon.base}/status")
    c.subscribe(f"{daemon.base}/result/+")
    state = lambda s: lambda m: m.topic == f"{daemon.base}/status" and m.json()["state"] == s  # noqa: E731
    c.wait_for(state("online"))
    notify_socket.wait_for("WATCHDOG", "1")  # healthy while idle

    before = c.count()
    c.publish(f"{daemon.base}/command", '{"id": "hang-1", "text": "lights on"}')
    assert engine.entered.wait(15)
    flipped = notify_socket.wait_for("STATUS", "degraded: worker_stuck", timeout=10)
    assert c.wait_for(state("degraded"), after=before).json()["reason"] == "worker_stuck"
    after_degraded = c.count()
    with pytest.raises(TimeoutError):  # 20 health checks without a single ping
        notify_socket.wait_for("WATCHDOG", after=flipped, timeout=1.0)

    engine.release.set()
    assert c.wait_for(lambda m: m.topic == f"{daemon.base}/result/hang-1").json()["status"] == "ok"
    recovered = notify_socket.wait_for("STATUS", "online", after=flipped, timeout=10)
    notify_socket.wait_for("WATCHDOG", "1", after=recovered, timeout=5)
    c.wait_for(state("online"), after=after_degraded)


def test_status_goes_online_stopping_offline(start_daemon, client_for):
    """Online with uptime and identity; a clean stop passes through stopping to offline."""
    d = start_daemon()
    c = client_for(d.base)
    c.subscribe(f"{d.base}/status")
    online = c.wait_for(lambda m: m.topic == f"{d.base}/status" and m.json()["state"] == "online").json()
    assert online["uptime_s"] >= 0 and online["node_id"] == d.settings.node_id
    d.stop()
    c.wait_for(lambda m: m.topic == f"{d.base}/status" and m.json()["state"] == "offline")
    states = [m.json()["state"] for m in c.messages(f"{d.base}/status")]
    assert states[-2:] == ["stopping", "offline"]


def test_starting_while_the_model_loads_and_requests_wait_for_it(
    broker, engine, tiny_model_dir, client_for, notify_socket
):
    """Connected first: status starting while the model loads; a request sent then is answered once it is
    loaded; READY=1 after."""
    from edged.app import Daemon

    may_load = threading.Event()

    def slow_load(_settings):
        assert may_load.wait(30)
        return Lent(engine)

    daemon = Daemon(make_settings(tiny_model_dir), slow_load, notifier=Notifier(notify_socket.path))
    c = client_for(daemon.base)
    c.subscribe(f"{daemon.base}/status")
    c.subscribe(f"{daemon.base}/result/+")
    starter = threading.Thread(target=daemon.start, name="test-start")
    starter.start()
    try:
        assert c.wait_for(lambda m: m.topic == f"{daemon.base}/status").json()["state"] == "starting"
        c.publish(f"{daemon.base}/command", '{"id": "early-1", "text": "lights on"}')
        notify_socket.wait_for("STATUS", "loading model tiny-qwen3-random")
        assert not daemon.ready.is_set() and not any("READY" in m for _, m in notify_socket.messages)
        may_load.set()
        starter.join(30)
        assert c.wait_for(lambda m: m.topic == f"{daemon.base}/result/early-1").json()["status"] == "ok"
        notify_socket.wait_for("READY", "1")
    finally:
        may_load.set()
        starter.join(30)
        daemon.stop()


def _stats(c, base: str, match=lambda body: True, after: int = 0) -> dict:
    return c.wait_for(lambda m: m.topic == f"{base}/stats" and match(m.json()), after=after).json()


def test_stats_are_published_retained_every_interval(start_daemon, client_for, broker):
    """{base}/stats: requests by kind and status, latency, tokens/s, queue, memory, reconnects; retained."""
    d = start_daemon(stats={"interval_s": 0.2})
    c = client_for(d.base)
    c.subscribe(f"{d.base}/stats")
    c.subscribe(f"{d.base}/result/+")
    first = _stats(c, d.base)
    assert first["requests_total"] == 0 and first["latency_ms"]["command"] == {"count": 0, "p50": None, "p95": None}
    command = c.request("command", {"text": "lights on"})
    query = c.request("query", {"text": "why?"})
    c.publish(f"{d.base}/command", b"{not json")
    stats = _stats(c, d.base, lambda body: body["requests_total"] == 3)
    assert stats["requests"] == {"command": {"error": 1, "ok": 1}, "query": {"ok": 1}}
    assert stats["latency_ms"]["command"] == {
        "count": 1,
        "p50": command["timing_ms"]["total"],
        "p95": command["timing_ms"]["total"],
    }
    assert stats["latency_ms"]["query"]["p95"] == query["timing_ms"]["total"]
    assert (
        stats["tokens_per_s"] > 0 and 0.0 <= stats["cache_hit_rate"] <= 1.0 and stats["cache_bytes"] > 0
    )  # prefix cache
    assert stats["queue_depth"] == 0 and stats["reconnects"] == 0 and stats["rss_bytes"] > 50 * 2**20
    assert stats["state"] == "online" and stats["uptime_s"] >= first["uptime_s"] and stats["window_s"] == 300
    with client_for(d.base) as late:  # a newcomer gets the last figures at once: retained
        late.subscribe(f"{d.base}/stats")
        assert late.wait_for(lambda m: m.topic == f"{d.base}/stats").retained


def test_home_assistant_discovery_describes_status_and_stats(start_daemon, client_for):
    """One device-based discovery config (retained); its health sensors point at the status and stats topics
    and every template renders on the real documents (the full schema check: tests/test_homeassistant.py)."""
    import jinja2

    prefix = f"ha-{uuid.uuid4().hex[:8]}"
    d = start_daemon(homeassistant={"discovery": True, "discovery_prefix": prefix}, stats={"interval_s": 0.2})
    c = client_for(d.base)
    c.subscribe(f"{prefix}/#")
    c.subscribe(f"{d.base}/status")
    c.subscribe(f"{d.base}/stats")
    c.request("command", {"text": "lights on"})
    documents = {
        "status": c.wait_for(lambda m: m.topic == f"{d.base}/status" and m.json()["state"] == "online").json(),
        "stats": _stats(c, d.base, lambda body: body["requests_total"] == 1),
    }
    config = c.wait_for(lambda m: m.topic == f"{prefix}/device/edged_{d.settings.node_id}/config")
    try:
        assert config.retained
        cfg = config.json()
        assert cfg["device"]["identifiers"] == [f"edged_{d.settings.node_id}"]
        assert cfg["device"]["model"] == "tiny-qwen3-random" and cfg["origin"]["name"] == "edged"
        env = jinja2.Environment()
        health = {k: v for k, v in cfg["components"].items() if v.get("entity_category") == "diagnostic"}
        assert len(health) == 11  # ten sensors and the problem binary sensor
        for key, comp in health.items():
            source = comp["state_topic"].rsplit("/", 1)[1]
            value = env.from_string(comp["value_template"]).render(value_json=documents[source])
            if key == "query_p95":
                assert value == "None"  # no query yet: Home Assistant shows unknown
            elif key == "problem":
                assert value == "OFF"
            elif source == "stats":
                float(value)
            else:
                assert value == "online" and "availability" not in comp  # the state sensor can show offline
    finally:
        c.publish(config.topic, b"", retain=True)  # leave the shared broker clean


def test_stop_closes_the_engine(broker, tiny_model_dir):
    """The daemon owns the engine its factory made: stop() closes it, also when it never went online."""
    from edged.app import Daemon

    engine = HungEngine()
    engine.release.set()
    daemon = Daemon(make_settings(tiny_model_dir, model={"warm_up": False}), lambda _s: engine)
    daemon.start()
    daemon.stop()
    assert engine.closed
