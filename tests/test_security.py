"""What a hostile caller with publish rights can and cannot make edged do (see SECURITY.md)."""

from __future__ import annotations

import getpass
import json
from pathlib import Path

import pytest
from conftest import PORCH_REGISTRY, SMOL_GREEDY_ENV, inbound

from edged.bus.mqtt import Inbound
from edged.devices.commands import DeviceControl
from edged.devices.confirmations import Confirmations
from edged.devices.registry import RegistryStore
from edged.devices.state import DeviceStates
from edged.service.handler import Job
from edged.service.intake import Intake, Reply
from edged.settings import Settings

CONFIG = Path(__file__).resolve().parent.parent / "config"
SMALL = Path(__file__).resolve().parent / "data" / "registry-small.toml"
BASE = "edged/sec-test"


def _inbound(suffix: str, payload: bytes | dict, **changes: object) -> Inbound:
    return inbound(f"{BASE}/{suffix}", payload, **changes)


def _intake(**settings: object) -> Intake:
    s = Settings(node_id="sec-test", model={"path": "/nonexistent"}, **settings)
    store = RegistryStore(CONFIG / "registry-home.toml")
    devices = DeviceControl(store, DeviceStates(), Confirmations(60), lambda _t, _p: None)
    return Intake(BASE, s, devices=devices)


# -- 2: the operator's dispatch = false wins ---------------------------------------------------------------
def test_request_cannot_turn_dispatch_on_when_the_operator_turned_it_off():
    """devices.dispatch = false is a dry run for every command: "dispatch": true in a request changes nothing;
    with dispatch on, a request may still ask for a dry run."""
    sent: list[tuple[str, bytes]] = []
    store = RegistryStore(SMALL)
    answer = '{"actions":[{"device":"porch_light","action":"turn_on","params":{}}],"say":"ok"}'
    off = DeviceControl(
        store, DeviceStates(), Confirmations(60), lambda t, p: sent.append((t, p)), dispatch_default=False
    )
    forced = off.outcome(store.current, "r1", answer, dispatch=True)
    assert sent == [] and forced.result["actions"][0]["dispatched"] is False
    on = DeviceControl(
        store, DeviceStates(), Confirmations(60), lambda t, p: sent.append((t, p)), dispatch_default=True
    )
    dry = on.outcome(store.current, "r2", answer, dispatch=False)
    assert sent == [] and dry.result["actions"][0]["dispatched"] is False
    assert on.outcome(store.current, "r3", answer, dispatch=None).dispatched and len(sent) == 1


# -- 4: where results may go ---------------------------------------------------------------------------------
HOSTILE_REPLY_TOPICS = [
    "a",  # any plain topic
    "zigbee2mqtt/x/set",  # a device command topic edged does not know about
    "zigbee2mqtt/garage_door/set",  # one it does
    "edged/other-node/command",  # another node's inputs
    "edged/other-node/result/x",  # another node's result tree
    f"{BASE}/command",
    f"{BASE}/result/",  # the prefix itself, nothing under it
    "edged/inbox",
]


@pytest.mark.parametrize("topic", HOSTILE_REPLY_TOPICS)
def test_reply_to_outside_the_allowed_prefixes_is_refused(topic):
    """A reply_to outside requests.reply_prefixes is refused (bad_reply_to, on {base}/result/{id}); an MQTT 5
    Response Topic there is refused the same way, so edged never publishes where a caller points it."""
    intake = _intake()
    for msg in (
        _inbound("command", {"id": "r1", "text": "on", "reply_to": topic}),
        _inbound("command", {"id": "r1", "text": "on"}, response_topic=topic),
        _inbound("confirm", {"id": "r1", "token": "x" * 16, "reply_to": topic}),
    ):
        refused = intake.decide(msg)
        assert isinstance(refused, Reply), (topic, refused)
        assert refused.topic == f"{BASE}/result/r1"
        assert refused.result.error is not None and refused.result.error.code.value == "bad_reply_to"


def test_reply_topics_under_the_allowed_prefixes_are_kept():
    intake = _intake()
    for topic in ("edged/inbox/panel/1", f"{BASE}/result/custom", f"{BASE}/result/panel/7"):
        job = intake.decide(_inbound("command", {"id": "r1", "text": "on", "reply_to": topic}))
        assert isinstance(job, Job) and job.reply_topic == topic
        job = intake.decide(_inbound("command", {"id": "r2", "text": "on"}, response_topic=topic))
        assert isinstance(job, Job) and job.reply_topic == topic


def test_reply_prefixes_are_configurable():
    intake = _intake(requests={"reply_prefixes": ["panels/"]})
    assert isinstance(intake.decide(_inbound("command", {"text": "on", "reply_to": "panels/hall"})), Job)
    refused = intake.decide(_inbound("command", {"id": "r1", "text": "on", "reply_to": f"{BASE}/result/r1"}))
    assert isinstance(refused, Reply) and refused.result.error.code.value == "bad_reply_to"
    with pytest.raises(ValueError, match="reply prefix"):
        Settings(node_id="x", requests={"reply_prefixes": ["a/#"]})


def test_errors_never_echo_more_than_a_short_excerpt():
    """200 KB of attacker text in a field name, a topic or a reply_to comes back as at most a short excerpt."""
    intake = _intake()
    noise = "\u2028<script>" + "A" * 200_000
    for msg in (
        _inbound("command", json.dumps({"text": "x", noise: 1, "b" + noise: 2, "c" + noise: 3, "d": 4}).encode()),
        _inbound("command", {"text": "x", "reply_to": "z/" + "A" * 500}),
        _inbound("command", {"text": "x", "session": noise}),
        _inbound("x" + "B" * 60_000, {"text": "x"}),
    ):
        refused = intake.decide(msg)
        assert isinstance(refused, Reply) and refused.result.error is not None
        message = refused.result.error.message
        assert len(message) < 600 and "A" * 41 not in message and "B" * 121 not in message, message[:200]
        assert "\u2028" not in message


def test_refusals_are_rate_limited_like_requests():
    """Over its limit a client's refusals are acknowledged without an answer (counted), so a flood of bad
    requests costs edged no publish each; another client still gets its errors."""
    intake = _intake(requests={"rate_limit": {"per_minute": 1, "burst": 3}})
    flood = [intake.decide(_inbound("command", b"{bad", user_properties=(("client", "mallory"),))) for _ in range(50)]
    answered = [d for d in flood if isinstance(d, Reply)]
    assert len(answered) == 12 and flood[12:] == [None] * 38 and intake.refusals_dropped == 38  # REFUSAL_BURST x 3
    other = intake.decide(_inbound("command", b"{bad", user_properties=(("client", "panel"),)))
    assert isinstance(other, Reply) and other.result.error.code.value == "bad_json"


# -- 3: every path to "garage open" and "door unlocked" needs confirmation -----------------------------------
GUARDED = ("garage_door", "front_door")  # confirm = true in config/registry-home.toml


def _items_reaching(device_id: str) -> list[dict]:
    """Every answer item the command schema allows that acts on ``device_id``: by id, by its area, by "all"
    (each action with its parameters at their bounds)."""
    from edged.devices.actions import _groups

    registry = RegistryStore(CONFIG / "registry-home.toml").current
    device = registry.device(device_id)
    items: list[dict] = []
    for name, action in device.all_actions().items():
        for bound in ("max", "min"):
            params = {p: getattr(spec, bound) for p, spec in action.params.items()}
            items.append({"device": device_id, "action": name, "params": params})
            for area, dtype, group_action in _groups(registry):
                if group_action == name and device in registry.targets(area, dtype, name):
                    items.append({"area": area, "type": dtype, "action": name, "params": params})
    return items


@pytest.mark.parametrize("device_id", GUARDED)
def test_every_path_to_a_guarded_device_needs_confirmation(device_id):
    """By name, by area, by "all", by position: nothing reaches the garage door or the front door lock
    without a token, and the token then sends exactly the held actions."""
    sent: list[tuple[str, bytes]] = []
    store = RegistryStore(CONFIG / "registry-home.toml")
    control = DeviceControl(store, DeviceStates(), Confirmations(60), lambda t, p: sent.append((t, p)))
    topic = store.current.device(device_id).command_topic
    items = _items_reaching(device_id)
    assert any("area" in i and i["area"] == "all" for i in items) or device_id == "front_door"  # one lock: no "all"
    assert any(i["action"] in ("set_position", "unlock") for i in items)
    for i, item in enumerate(items):
        answer = json.dumps({"actions": [item], "say": ""})
        out = control.outcome(store.current, f"r{i}", answer, dispatch=None)
        assert out.status == "needs_confirmation", item
        assert topic not in [t for t, _ in sent], item
        held = [a for a in out.result["actions"] if a["device"] == device_id]
        assert held and all(a["needs_confirmation"] and not a["dispatched"] for a in held), item
    token = out.result["confirmation"]["token"]
    assert control.confirm(token).status == "ok" and topic in [t for t, _ in sent]


def test_device_confirm_covers_actions_without_their_own_policy(tmp_path):
    """``confirm = true`` on a device holds every action, also ones its type or file mark as safe."""
    path = tmp_path / "r.toml"
    path.write_text(
        SMALL.read_text().replace(
            'command_topic = "test-devices/porch_light/set"', 'command_topic = "p/set"\nconfirm = true'
        )
    )
    store = RegistryStore(path)
    sent: list[tuple[str, bytes]] = []
    control = DeviceControl(store, DeviceStates(), Confirmations(60), lambda t, p: sent.append((t, p)))
    out = control.outcome(
        store.current,
        "r1",
        '{"actions":[{"device":"porch_light","action":"turn_on","params":{}}],"say":""}',
        dispatch=None,
    )
    assert out.status == "needs_confirmation" and sent == []


@pytest.mark.parametrize(
    "item",
    [
        {"device": "garage_door", "action": "set_position", "params": {"position": 100}},
        {"area": "garage", "type": "cover", "action": "open", "params": {}},
        {"area": "all", "type": "cover", "action": "open", "params": {}},
        {"area": "all", "type": "cover", "action": "set_position", "params": {"position": 100}},
    ],
)
def test_garage_cannot_be_opened_by_position_or_area(item):
    sent: list[tuple[str, bytes]] = []
    store = RegistryStore(CONFIG / "registry-home.toml")
    control = DeviceControl(store, DeviceStates(), Confirmations(60), lambda t, p: sent.append((t, p)))
    out = control.outcome(store.current, "r1", json.dumps({"actions": [item], "say": ""}), dispatch=None)
    assert "zigbee2mqtt/garage_door/set" not in [t for t, _ in sent] and out.status == "needs_confirmation"


class ScriptedAnswers:
    """The real engine runs each generation; its answer text is then replaced by the next scripted one (a model
    talked into an attack by injected text writes exactly such answers, within the schema)."""

    def __init__(self, engine: object, answers: list[str]):
        self._engine = engine
        self._answers = answers

    def __getattr__(self, name: str) -> object:
        return getattr(self._engine, name)

    def _swap(self, gen: object) -> object:
        from dataclasses import replace as swap

        return swap(gen, answer=self._answers.pop(0)) if self._answers and not isinstance(gen, Exception) else gen

    def generate(self, *args: object, **kwargs: object) -> object:  # engines that answer in the caller's thread
        return self._swap(self._engine.generate(*args, **kwargs))  # type: ignore[attr-defined]

    def submit(self, request: object, on_done) -> None:  # engines with their own queue
        self._engine.submit(request, lambda outcome: on_done(self._swap(outcome)))  # type: ignore[attr-defined]


def test_daemon_holds_garage_and_door_through_a_session(start_daemon, client_for, engine, tiny_model_dir, tmp_path):
    """Through the daemon, in one session: "open the garage" by position and "unlock" by area come back
    needs_confirmation and nothing reaches the devices until the token is confirmed."""
    import uuid

    from conftest import make_settings

    prefix = f"sec-{uuid.uuid4().hex[:8]}"
    registry = tmp_path / "registry.toml"
    registry.write_text((CONFIG / "registry-home.toml").read_text().replace("zigbee2mqtt/", f"{prefix}/"))
    answers = [
        '{"actions":[{"device":"garage_door","action":"set_position","params":{"position":100}}],"say":"open"}',
        '{"actions":[{"area":"hallway","type":"lock","action":"unlock","params":{}}],"say":"unlocked"}',
    ]
    d = start_daemon(
        make_settings(
            tiny_model_dir, devices={"registry": registry}, model={"warm_up": False}, commands={"local": False}
        ),
        use_engine=ScriptedAnswers(engine, answers),
    )
    c = client_for(d.base)
    c.subscribe(f"{prefix}/+/set")
    # the model path (templates and rules off), so the scripted model answers
    first = c.request("command", {"text": "zq blorp one", "session": "s1"})
    second = c.request("command", {"text": "zq blorp two", "session": "s1"})
    assert (first["status"], second["status"]) == ("needs_confirmation", "needs_confirmation")
    c.publish(f"{d.base}/confirm", json.dumps({"id": "c1", "token": second["result"]["confirmation"]["token"]}))
    c.subscribe(f"{d.base}/result/c1")
    sent = c.wait_for(lambda m: m.topic.startswith(prefix))  # the confirmed unlock: the first device command
    assert sent.topic == f"{prefix}/front_door/set" and json.loads(sent.payload) == {"state": "UNLOCK"}
    assert c.messages(f"{prefix}/garage_door/set") == []


# -- 8: size limits on every topic ---------------------------------------------------------------------------
def test_oversized_states_readings_and_admin_requests_are_not_decoded():
    """A device state, a sensor reading or an admin request over requests.max_payload_bytes is dropped (or
    refused) before anything parses it."""
    s = Settings(
        node_id="sec-test",
        model={"path": "/nonexistent"},
        requests={"max_payload_bytes": 1024},
        admin={"reload_topic": True},
        telemetry={"sensors": [{"id": "vibration", "topic": "plant/+/vibration"}]},
    )
    from edged.diagnostics.telemetry import TelemetryStore

    store = RegistryStore(CONFIG / "registry-home.toml")
    states = DeviceStates()
    telemetry = TelemetryStore(s.telemetry)
    intake = Intake(
        BASE, s, devices=DeviceControl(store, states, Confirmations(60), lambda *_: None), telemetry=telemetry
    )
    big_state = json.dumps({"state": "ON", "pad": "x" * 2000}).encode()
    assert intake.decide(inbound("zigbee2mqtt/garage_light", big_state)) is None
    assert states.snapshot() == {} and intake.oversized == 1
    assert intake.decide(inbound("zigbee2mqtt/garage_light", b'{"state": "ON"}')) is None
    assert states.snapshot() == {"garage_light": "state=ON"}
    big_reading = b'{"value": 1.0, "pad": "' + b"x" * 2000 + b'"}'
    intake.decide(inbound("plant/pump_3/vibration", big_reading))
    assert intake.oversized == 2 and telemetry.topics()  # nothing recorded for it
    refused = intake.decide(_inbound("admin/reload", b'{"id": "a1", "x": "' + b"y" * 2000 + b'"}'))
    assert isinstance(refused, Reply) and refused.result.error.code.value == "payload_too_large"


def test_broker_keeps_messages_over_the_packet_limit_from_edged(start_daemon, client_for):
    """MQTT 5 Maximum Packet Size (from requests.max_payload_bytes): the broker never hands edged a message far
    over the limit, so edged never holds it; one within the headroom is still answered payload_too_large."""
    d = start_daemon(requests={"max_payload_bytes": 1024})
    c = client_for(d.base)
    c.subscribe(f"{d.base}/result/+")
    c.publish(f"{d.base}/command", json.dumps({"id": "huge", "text": "x" * 200_000}))
    c.publish(f"{d.base}/command", json.dumps({"id": "big", "text": "x" * 4000}))
    assert c.request("command", {"id": "after", "text": "lights on"})["status"] == "ok"  # FIFO: the others came first
    unread = [m.json() for m in c.messages(f"{d.base}/result/unknown")]  # too large to read an id from
    assert [r["error"]["code"] for r in unread] == ["payload_too_large"], "the huge one reached edged"


# -- 7: ledger failures ----------------------------------------------------------------------------------------
def test_a_failing_ledger_answers_internal_frees_the_slot_and_degrades(start_daemon, client_for):
    """The ledger's disk turns read-only: every request is answered internal and acknowledged (more of them
    than receive_maximum, so no slot stays held), and the status says degraded."""
    d = start_daemon(mqtt={"receive_maximum": 2})
    c = client_for(d.base)
    c.subscribe(f"{d.base}/status")
    d.ledger._db.execute("PRAGMA query_only = ON")  # writes now fail as on a read-only file system
    answers = [c.request("command", {"id": f"l{i}", "text": "lights on"}, timeout=30) for i in range(5)]
    assert [(a["status"], a["error"]["code"]) for a in answers] == [("error", "internal")] * 5
    status = c.wait_for(lambda m: m.topic == f"{d.base}/status" and m.json()["state"] == "degraded").json()
    assert status["reason"] == "ledger_failed"


def test_a_corrupt_ledger_is_moved_aside_and_replaced(tmp_path):
    """A ledger file SQLite cannot read is renamed *.corrupt-<time> (logged) and a fresh one is used, instead of
    edged failing the same way on every restart."""
    from structlog.testing import capture_logs

    from edged.service.ledger import Ledger, Verdict

    path = tmp_path / "ledger.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with capture_logs() as logs:
        ledger = Ledger(path, window_s=60, max_rows=100)
    assert ledger.admit("r1", "t/r1", redelivered=False).verdict is Verdict.NEW
    aside = list(tmp_path.glob("ledger.sqlite3.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not a database")
    assert [e for e in logs if e["event"] == "ledger_corrupt" and e["log_level"] == "error"]
    ledger.close()


# -- 5: a refused publish is not a delivery --------------------------------------------------------------------
@pytest.fixture
def acl_broker(tmp_path):
    """A private Mosquitto with passwords and an ACL: edged may write its status, results under result/ok/ and
    the porch light's command topic only; the tester may do anything."""
    from proc import Mosquitto, free_port, password_file

    acl = tmp_path / "acl"
    acl.write_text(
        "user edged\ntopic read edged/acl/+\ntopic write edged/acl/status\ntopic write edged/acl/stats\n"
        "topic write edged/acl/result/ok/#\ntopic write acl-dev/porch_light/set\n"
        "user tester\ntopic readwrite #\n"
    )
    passwords = password_file(tmp_path / "passwords", {"edged": "e-secret", "tester": "t-secret"})
    broker = Mosquitto(
        free_port(),
        tmp_path,
        f"user {getpass.getuser()}\nallow_anonymous false\npassword_file {passwords}\nacl_file {acl}\n",
    )
    broker.start()
    broker.acl = acl
    broker.clients = []
    yield broker
    for client in broker.clients:
        client.close()
    broker.stop()


def _tester(broker, base: str):
    from edged.bus.client import EdgedClient

    client = EdgedClient(base, port=broker.port, username="tester", password="t-secret", timeout=60)
    broker.clients.append(client)
    return client


def _ask(client, base: str, body: dict) -> dict:
    client.subscribe(body["reply_to"])
    client.publish(f"{base}/command", json.dumps(body))
    return client.wait_for(lambda m: m.topic == body["reply_to"], timeout=60).json()


def _acl_daemon(start_daemon, tiny_model_dir, tmp_path, broker, **overrides):
    from conftest import make_settings

    registry = tmp_path / "registry.toml"
    registry.write_text(SMALL.read_text().replace("test-devices/", "acl-dev/"))
    mqtt = {
        "port": broker.port,
        "username": "edged",
        "password": "e-secret",
        "reconnect_min_s": 1,
        "reconnect_max_s": 2,
    }
    settings = make_settings(
        tiny_model_dir,
        node_id="acl",
        mqtt=mqtt,
        devices={"registry": registry},
        model={"warm_up": False},
        commands={"local": False},  # the scripted model answers every command
    )
    return start_daemon(settings, **overrides)


def test_a_refused_result_is_retried_and_the_request_kept(
    acl_broker, start_daemon, client_for, tiny_model_dir, tmp_path
):
    """The broker refuses the result (PUBACK "not authorized"): edged does not take that for delivery. It keeps
    the request unacknowledged and retries with backoff, so once the ACL allows it the result arrives, once."""
    import signal

    from tally import log_events

    with log_events() as events:
        d = _acl_daemon(start_daemon, tiny_model_dir, tmp_path, acl_broker)
        c = _tester(acl_broker, d.base)
        reply = "edged/acl/result/denied/1"
        c.subscribe(reply)
        assert _ask(c, d.base, {"id": "ok-1", "text": "on", "reply_to": "edged/acl/result/ok/1"})["id"] == "ok-1"
        c.publish(f"{d.base}/command", json.dumps({"id": "denied-1", "text": "lights on", "reply_to": reply}))
        refused = events.wait_for("mqtt_publish_refused", topic=reply, attempt=2)  # retried, refused again
        assert refused["code"] == 135 and d.bus.refused >= 2 and d.bus.unconfirmed() >= 1
        grant = "topic write edged/acl/result/#\nuser tester"
        acl_broker.acl.write_text(acl_broker.acl.read_text().replace("user tester", grant))
        acl_broker.proc.send_signal(signal.SIGHUP)  # Mosquitto re-reads its ACL
        result = c.wait_for(lambda m: m.topic == reply, timeout=60).json()
        assert result["id"] == "denied-1"
        assert _ask(c, d.base, {"id": "ok-2", "text": "and now?", "reply_to": "edged/acl/result/ok/2"})["id"] == "ok-2"
        assert len(c.messages(reply)) == 1


def test_dispatched_means_the_broker_took_the_device_command(
    acl_broker, start_daemon, client_for, engine, tiny_model_dir, tmp_path
):
    """A device command the broker refuses is reported dispatched: false; one it took, dispatched: true."""
    answer = (
        '{"actions":[{"device":"porch_light","action":"turn_on","params":{}},'
        '{"device":"thermostat","action":"set_temperature","params":{"setpoint":20}}],"say":"ok"}'
    )
    d = _acl_daemon(start_daemon, tiny_model_dir, tmp_path, acl_broker, use_engine=ScriptedAnswers(engine, [answer]))
    c = _tester(acl_broker, d.base)
    result = _ask(c, d.base, {"id": "ok-3", "text": "porch on, heating 20", "reply_to": "edged/acl/result/ok/3"})
    dispatched = {a["device"]: a["dispatched"] for a in result["result"]["actions"]}
    assert dispatched == {"porch_light": True, "thermostat": False}


# -- 11: secrets stay out of reprs, tracebacks and readable files ----------------------------------------------
def test_secrets_stay_out_of_reprs_and_console_tracebacks():
    """The MQTT password is not in BusConfig's repr, nor in a console traceback's local variables."""
    import uuid

    from edged.app import _bus_config
    from edged.ops.logs import console_renderer

    secret = f"pw-{uuid.uuid4().hex}"  # not in any source line a traceback shows
    settings = Settings(node_id="sec-test", model={"path": "/nonexistent"}, mqtt={"password": secret})
    config = _bus_config(settings)
    assert config.password == secret and secret not in repr(config)

    def connect(cfg: object) -> None:
        password = settings.mqtt.resolved_password()  # a local holding the secret, as in real connect code
        raise ConnectionError(f"refused for user {len(password or '')}")

    try:
        connect(config)
    except ConnectionError:
        rendered = console_renderer()(None, "error", {"event": "mqtt_failed", "exc_info": True})
    assert "ConnectionError" in rendered and secret not in rendered


def test_an_inline_password_in_a_world_readable_config_is_warned_about(tmp_path):
    from structlog.testing import capture_logs

    from edged.settings import warn_exposed_secret

    config = tmp_path / "edged.toml"
    config.write_text('node_id = "n"\n[mqtt]\npassword = "hunter2"\n')
    config.chmod(0o644)
    with capture_logs() as logs:
        assert warn_exposed_secret(config)
    warned = [e for e in logs if e["event"] == "mqtt_password_readable"]
    assert warned and "hunter2" not in repr(warned)
    config.chmod(0o600)
    with capture_logs() as logs:
        assert not warn_exposed_secret(config)
    assert not [e for e in logs if e["event"] == "mqtt_password_readable"]


# -- 9: sessions belong to their caller ------------------------------------------------------------------------
def test_a_session_key_reaches_only_its_own_callers_history(start_daemon, client_for):
    """Two callers with different reply trees (inboxes) using the same session key get separate histories: the
    second caller's prompt carries nothing of the first's conversation; the first's own follow-up does."""
    d = start_daemon()
    c = client_for(d.base)

    def ask(inbox: str, rid: str) -> dict:
        return _ask(c, d.base, {"id": rid, "text": "lights on", "session": "shared-key", "reply_to": f"{inbox}/{rid}"})

    first = ask("edged/inbox/alice", "a1")
    other = ask("edged/inbox/mallory", "m1")
    again = ask("edged/inbox/alice", "a2")
    assert other["usage"]["prompt_tokens"] == first["usage"]["prompt_tokens"]  # mallory saw no history
    assert again["usage"]["prompt_tokens"] > first["usage"]["prompt_tokens"]  # alice's session continues


# -- 10: cancel and confirm are bound to the caller -------------------------------------------------------------
def test_a_bare_id_cancels_only_a_request_answered_on_the_default_topic():
    """A cancel names the request by id and reply topic: knowing another caller's id is not enough."""
    from edged.service.progress import cancel_key

    intake = _intake()
    assert intake.decide(_inbound("cancel", {"id": "r1"})) is None
    assert intake.cancellations(cancel_key("r1", f"{BASE}/result/r1"))
    assert not intake.cancellations(cancel_key("r1", "edged/inbox/alice/r1"))  # alice's r1 keeps running
    intake.decide(_inbound("cancel", {"id": "r1", "reply_to": "edged/inbox/alice/r1"}))
    assert intake.cancellations(cancel_key("r1", "edged/inbox/alice/r1"))


def test_a_confirmation_token_works_only_for_its_caller_and_registry(tmp_path):
    """A token redeems only from the reply tree its command was answered on, and not after the registry changed;
    a wrong caller's attempt leaves it pending. Evicting a pending token is logged."""
    from structlog.testing import capture_logs

    path = tmp_path / "r.toml"
    path.write_text(SMALL.read_text())
    store = RegistryStore(path)
    sent: list[tuple[str, bytes]] = []
    control = DeviceControl(store, DeviceStates(), Confirmations(60), lambda t, p: sent.append((t, p)))
    unlock = '{"actions":[{"device":"front_door","action":"unlock","params":{}}],"say":""}'
    held = control.outcome(store.current, "r1", unlock, dispatch=None, reply_topic="edged/inbox/alice/r1")
    token = held.result["confirmation"]["token"]
    stolen = control.confirm(token, reply_topic="edged/inbox/mallory/c1")
    assert (stolen.status, stolen.code, sent) == ("error", "token_unknown", [])
    assert control.confirm(token, reply_topic="edged/inbox/alice/c1").status == "ok" and len(sent) == 1
    again = control.outcome(store.current, "r2", unlock, dispatch=None, reply_topic="edged/inbox/alice/r2")
    path.write_text(SMALL.read_text() + "\n# edited\n")  # a new registry version
    late = control.confirm(again.result["confirmation"]["token"], reply_topic="edged/inbox/alice/c2")
    assert (late.status, late.code, len(sent)) == ("error", "token_expired", 1)
    small = Confirmations(60, max_pending=2)
    with capture_logs() as logs:
        for i in range(3):
            small.hold(f"q{i}", [])
    assert [e["request"] for e in logs if e["event"] == "confirmation_evicted"] == ["q0"]


# -- 6: a real kill -9 after the dispatch ----------------------------------------------------------------------
@pytest.mark.timeout(2400)  # SmolLM2 runs the command twice, on 2 shared cores: minutes each under load
@pytest.mark.parametrize("with_id", [True, False])
def test_kill_9_after_the_dispatch_never_dispatches_again(with_id, smollm2_dir, tmp_path):
    """`edged run` dispatches the porch light, then the broker refuses its result (ACL), so the request stays
    unacknowledged; edged is killed with SIGKILL. Restarted (results now allowed), it gets the broker's
    redelivery and answers it (with the stored result, or, killed before that was stored, run again with the
    earlier dispatch reported); the device commands went out once: with an id, and without one (edged derives
    the same id from the redelivered packet; a random one would run it again)."""
    import signal

    from proc import Edged, Mosquitto, free_port, password_file, write_config

    from edged.bus.client import EdgedClient

    node, prefix = "crash9", f"crash-{'id' if with_id else 'noid'}"
    base = f"edged/{node}"
    acl = tmp_path / "acl"
    rules = f"topic read {base}/+\ntopic write {base}/status\ntopic write {base}/stats\ntopic write {prefix}/+/set\n"
    acl.write_text(f"user edged\n{rules}user tester\ntopic readwrite #\n")
    passwords = password_file(tmp_path / "passwords", {"edged": "e-secret", "tester": "t-secret"})
    (tmp_path / "edged-password").write_text("e-secret\n")
    broker = Mosquitto(
        free_port(),
        tmp_path,
        f"user {getpass.getuser()}\nallow_anonymous false\npassword_file {passwords}\nacl_file {acl}\n",
    )
    broker.start()
    registry = tmp_path / "registry.toml"
    registry.write_text(PORCH_REGISTRY.format(prefix=prefix))
    config = write_config(tmp_path / "edged.toml", smollm2_dir, node, f'[devices]\nregistry = "{registry}"\n')
    env = {
        **SMOL_GREEDY_ENV,
        "EDGED_MODEL__PATH": str(smollm2_dir),
        "EDGED_MQTT__PORT": str(broker.port),
        "EDGED_MQTT__USERNAME": "edged",
        "EDGED_MQTT__PASSWORD_FILE": str(tmp_path / "edged-password"),
    }
    runs: list[Edged] = []
    try:
        with EdgedClient(base, port=broker.port, username="tester", password="t-secret", timeout=1000) as c:
            for topic in (f"{base}/status", f"{base}/result/+", f"{prefix}/#"):
                c.subscribe(topic)

            def start() -> Edged:
                seen = len(c.messages(f"{base}/status"))
                runs.append(Edged(config, tmp_path / f"edged-{len(runs)}.log", env))
                c.wait_for(lambda m: m.topic == f"{base}/status" and m.json()["state"] == "online", after=seen)
                return runs[-1]

            first = start()
            body = {"text": "turn on the porch light", **({"id": "k1"} if with_id else {})}
            c.publish(f"{base}/command", json.dumps(body))
            c.wait_for(lambda m: m.topic == f"{prefix}/porch_light/set")  # dispatched
            first.wait_event(lambda: any(e["event"] == "mqtt_publish_refused" for e in first.events()), timeout=300)
            sent = len([e for e in first.events() if e["event"] == "device_command"])
            c.wait_for(lambda _m: len([m for m in c.messages() if m.topic.startswith(prefix + "/")]) >= sent)
            before = [(m.topic, m.payload.decode()) for m in c.messages() if m.topic.startswith(prefix + "/")]
            first.stop(signal.SIGKILL)  # the result never reached the broker; the request is not acknowledged
            acl.write_text(f"user edged\n{rules}topic write {base}/result/#\nuser tester\ntopic readwrite #\n")
            broker.proc.send_signal(signal.SIGHUP)
            second = start()
            result = c.wait_for(lambda m: m.topic.startswith(f"{base}/result/")).json()
            device = c.messages(f"{prefix}/porch_light/set")
        print(f"\nkill -9 after dispatch (id={with_id}): device commands {len(device)}, result {result.get('status')}")
        assert len(device) == len(before), "a device command went out again after the crash"
        assert result["id"].startswith("k1" if with_id else "pkt-")
        if result.get("replayed") is True:  # the stored result reached the disk: the redelivery gets it again
            assert [a["dispatched"] for a in result["result"]["actions"]] == [True] * len(before)
            assert not [e for e in second.events() if e["event"] == "request_done" and e.get("id") == result["id"]]
        else:  # killed before the result was stored: run again, and the dispatch claim held the commands back
            assert result["result"]["already_dispatched"] == [{"topic": t, "payload": p} for t, p in before]
    finally:
        for run in runs:
            if run.proc.poll() is None:
                run.stop(signal.SIGKILL)
        broker.stop()
