"""Per-client rate limits and shared-group topics, without a broker."""

from __future__ import annotations

import pytest
from conftest import inbound
from pydantic import ValidationError

from edged.bus.mqtt import Inbound
from edged.service.handler import Job
from edged.service.intake import Intake, Reply
from edged.service.ratelimit import RateLimiter
from edged.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill_at_the_rate():
    """A client gets its burst at once, then one request per 60/per_minute seconds."""
    clock = Clock()
    limiter = RateLimiter(per_minute=6, burst=3, max_clients=10, clock=clock)
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.retry_after_s("a") == pytest.approx(10.0)
    clock.now += 9.9
    assert not limiter.allow("a")
    clock.now += 0.2
    assert limiter.allow("a") and not limiter.allow("a")
    clock.now += 3600  # a long quiet spell refills to the burst, no more
    assert sum(limiter.allow("a") for _ in range(10)) == 3


def test_clients_are_independent_and_anonymous_ones_share_a_bucket():
    limiter = RateLimiter(per_minute=1, burst=1, max_clients=10, clock=Clock())
    assert limiter.allow("a") and not limiter.allow("a")
    assert limiter.allow("b")
    assert limiter.allow(None) and not limiter.allow(None)  # leaving the id out does not escape the limit


def test_tracked_clients_are_bounded_least_recently_seen_first():
    """Many client ids cost bounded memory; a forgotten client starts again with a full bucket."""
    limiter = RateLimiter(per_minute=1, burst=1, max_clients=3, clock=Clock())
    for i in range(1000):
        limiter.allow(f"c{i}")
    assert limiter.tracked() == 3
    assert not limiter.allow("c999")  # still tracked: empty bucket
    assert limiter.allow("c0")  # forgotten long ago


BASE = "edged/pool"


def _settings(**overrides) -> Settings:
    return Settings(node_id="n1", model={"path": "/nonexistent"}, **overrides)


def _inbound(suffix: str, body: dict) -> Inbound:
    return inbound(f"{BASE}/{suffix}", body, received_at=0.0)


def test_rate_limit_in_intake_applies_to_requests_and_follows_reload():
    intake = Intake(BASE, _settings(requests={"rate_limit": {"per_minute": 1, "burst": 1}}))
    assert isinstance(intake.decide(_inbound("command", {"text": "on", "client": "p"})), Job)
    refused = intake.decide(_inbound("query", {"id": "q1", "text": "why?", "client": "p"}))
    assert isinstance(refused, Reply) and refused.result.error is not None
    assert (refused.result.id, refused.result.error.code.value) == ("q1", "rate_limited")
    intake.configure(_settings(requests={"rate_limit": {"per_minute": 1, "burst": 1}}))  # same limits: buckets kept
    assert isinstance(intake.decide(_inbound("command", {"text": "on", "client": "p"})), Reply)
    intake.configure(_settings())  # reloaded without a limit
    assert isinstance(intake.decide(_inbound("command", {"text": "on", "client": "p"})), Job)


def test_shared_group_subscriptions_and_instance_topics():
    """Requests are shared; confirm/cancel/admin reach every instance; status and stats are per instance."""
    s = _settings(base_topic=BASE, mqtt={"shared_group": "pool"}, admin={"reload_topic": True})
    assert Intake(BASE, s).subscriptions() == [
        f"$share/pool/{BASE}/command",
        f"$share/pool/{BASE}/query",
        f"{BASE}/confirm",
        f"{BASE}/cancel",
        f"{BASE}/admin/reload",
    ]
    assert (s.instance_topic("status"), s.instance_topic("stats")) == (f"{BASE}/status/n1", f"{BASE}/stats/n1")
    alone = _settings(base_topic=BASE)
    assert Intake(BASE, alone).subscriptions() == [f"{BASE}/+"] and alone.instance_topic("status") == f"{BASE}/status"


@pytest.mark.parametrize(
    "overrides",
    [
        {"mqtt": {"shared_group": "pool"}},
        {"base_topic": BASE, "mqtt": {"shared_group": "pool", "protocol": "3.1.1"}},
        {"base_topic": BASE, "mqtt": {"shared_group": "a/b"}},
        {"requests": {"rate_limit": {"per_minute": 0}}},
    ],
)
def test_invalid_group_and_limit_settings_are_refused(overrides):
    with pytest.raises(ValidationError):
        _settings(**overrides)


def test_in_a_group_only_the_instance_that_issued_a_token_answers_its_confirm(tmp_path):
    from pathlib import Path

    from edged.devices.commands import DeviceControl
    from edged.devices.confirmations import Confirmations
    from edged.devices.registry import RegistryStore
    from edged.devices.state import DeviceStates

    registry = Path(__file__).resolve().parent / "data" / "registry-small.toml"
    s = _settings(base_topic=BASE, mqtt={"shared_group": "pool"})

    def instance() -> Intake:
        devices = DeviceControl(RegistryStore(registry), DeviceStates(), Confirmations(60), lambda _t, _p: None)
        return Intake(BASE, s, devices=devices)

    issuer, other = instance(), instance()
    token = issuer.devices.confirmations.hold("c1", [])
    message = _inbound("confirm", {"id": "k1", "token": token})
    assert other.decide(message) is None  # not its token: another member answers
    answer = issuer.decide(message)
    assert isinstance(answer, Reply) and answer.result.status == "ok"
    assert isinstance(issuer.decide(message), Reply)  # reused: still its token, answered token_used
    assert isinstance(
        other.decide(_inbound("confirm", {"id": "k2", "token": 5})), Reply
    )  # malformed: every member says so
