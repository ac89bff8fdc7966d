"""Intake decisions without a broker: who asked and at which priority."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from conftest import inbound

from edged.bus.mqtt import Inbound
from edged.devices.commands import DeviceControl
from edged.devices.confirmations import Confirmations
from edged.devices.registry import RegistryStore
from edged.devices.state import DeviceStates
from edged.diagnostics.telemetry import TelemetryStore
from edged.service.handler import Job
from edged.service.intake import Intake, Reply
from edged.settings import Settings

BASE = "edged/intake-test"


def _inbound(suffix: str, body: dict, user_properties: tuple[tuple[str, str], ...] = ()) -> Inbound:
    return inbound(f"{BASE}/{suffix}", body, user_properties=user_properties)


@pytest.fixture
def intake() -> Intake:
    return Intake(BASE, Settings(node_id="intake-test", model={"path": "/nonexistent"}))


def test_priority_defaults_by_kind_and_can_be_asked_for(intake):
    assert intake.decide(_inbound("command", {"text": "lights on"})).priority == "high"
    assert intake.decide(_inbound("query", {"text": "why?"})).priority == "normal"
    assert intake.decide(_inbound("query", {"text": "why?", "priority": "high"})).priority == "high"
    asked = intake.decide(_inbound("command", {"text": "on"}, (("priority", "low"),)))
    assert isinstance(asked, Job) and asked.priority == "low"
    # the payload field wins over the user property
    assert (
        intake.decide(_inbound("command", {"text": "on", "priority": "normal"}, (("priority", "low"),))).priority
        == "normal"
    )


def test_client_from_field_or_user_property(intake):
    assert intake.decide(_inbound("command", {"text": "on"})).client is None
    assert intake.decide(_inbound("command", {"text": "on"}, (("client", "panel-1"),))).client == "panel-1"
    assert intake.decide(_inbound("command", {"text": "on", "client": "hall"}, (("client", "x"),))).client == "hall"


@pytest.mark.parametrize("props", [(("priority", "urgent"),), (("client", "no spaces allowed"),)])
def test_bad_user_properties_are_refused_with_a_code(intake, props):
    decision = intake.decide(_inbound("command", {"id": "r1", "text": "on"}, props))
    assert isinstance(decision, Reply) and decision.result.id == "r1"
    assert decision.result.error is not None and decision.result.error.code.value == "bad_type"


def _guarded_intake() -> Intake:
    registry = Path(__file__).resolve().parent.parent / "config" / "registry-home.toml"
    settings = Settings(
        node_id="intake-test",
        model={"path": "/nonexistent"},
        devices={"registry": str(registry)},
        telemetry={"sensors": [{"id": "vibration", "topic": "plant/+/vibration"}]},
    )
    devices = DeviceControl(RegistryStore(registry), DeviceStates(), Confirmations(60), lambda _t, _p: None)
    return Intake(BASE, settings, devices=devices, telemetry=TelemetryStore(settings.telemetry))


@pytest.mark.parametrize(
    "reply_to",
    [
        "zigbee2mqtt/living_room_ceiling/set",  # a device's command topic: the result would drive the light
        "zigbee2mqtt/living_room_ceiling",  # its state topic: the result would be read as its state
        "plant/pump_3/vibration",  # a sensor topic: the result would be read as a reading
        f"{BASE}/command",  # edged's own inputs and status
        f"{BASE}/status",
        f"{BASE}/admin/reload",
        f"{BASE}/progress/r1",
    ],
)
def test_reply_to_never_names_a_topic_edged_reads_or_that_drives_a_device(reply_to):
    intake = _guarded_intake()
    refused = intake.decide(_inbound("command", {"id": "r1", "text": "on", "reply_to": reply_to}))
    assert isinstance(refused, Reply) and refused.topic == f"{BASE}/result/r1"
    assert refused.result.error is not None and refused.result.error.code.value == "bad_reply_to"
    # an MQTT 5 Response Topic there is refused the same way, answered on the default topic
    msg = _inbound("command", {"id": "r2", "text": "on"})
    refused = intake.decide(replace(msg, response_topic=reply_to))
    assert isinstance(refused, Reply) and refused.topic == f"{BASE}/result/r2"
    assert refused.result.error is not None and refused.result.error.code.value == "bad_reply_to"


def test_ordinary_reply_topics_are_kept():
    intake = _guarded_intake()
    for topic in ("edged/inbox/hall/1", f"{BASE}/result/custom"):
        job = intake.decide(_inbound("command", {"id": "r1", "text": "on", "reply_to": topic}))
        assert isinstance(job, Job) and job.reply_topic == topic
