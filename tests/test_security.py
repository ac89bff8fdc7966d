"""What a hostile caller with publish rights can and cannot make edged do (see SECURITY.md)."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest

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
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    msg = Inbound(
        topic=f"{BASE}/{suffix}",
        payload=body,
        retained=False,
        dup=False,
        response_topic=None,
        correlation_data=None,
        expiry_s=None,
        received_at=time.monotonic(),
        mid=1,
        qos=1,
    )
    return replace(msg, **changes)  # type: ignore[arg-type]


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
    assert len(answered) == 3 and flood[3:] == [None] * 47 and intake.refusals_dropped == 47
    other = intake.decide(_inbound("command", b"{bad", user_properties=(("client", "panel"),)))
    assert isinstance(other, Reply) and other.result.error.code.value == "bad_json"
