"""edged in-process against the real Mosquitto and the tiny real MLX model: the contract v1."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

ERROR_TOPIC = "result/unknown"


def _result(client, base: str, rid: str):
    return client.wait_for(lambda m: m.topic == f"{base}/result/{rid}").json()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_command_and_query_round_trip(start_daemon, client_for, protocol):
    """A command runs non-thinking, a query thinking; both answer with usage and timing."""
    d = start_daemon(mqtt={"protocol": protocol})
    c = client_for(d.base, mqtt5=protocol == "5")
    command = c.request("command", {"text": "turn off the living room lights"})
    query = c.request("query", {"text": "why is pump 3 vibrating?", "context": {"vibration_mm_s": 7.9}})
    assert (command["status"], command["kind"], command["mode"]) == ("ok", "command", "no_think")
    assert (query["status"], query["kind"], query["mode"]) == ("ok", "query", "think")
    for r in (command, query):
        assert isinstance(r["result"]["text"], str)
        assert r["model"] == "tiny-qwen3-random"
        assert r["usage"]["prompt_tokens"] > 0 and r["usage"]["completion_tokens"] > 0
        assert r["timing_ms"]["total"] >= r["timing_ms"]["prefill"] > 0
    assert "reasoning" not in query  # only when asked for
    assert query["usage"]["reasoning_tokens"] > 0 and command["usage"]["reasoning_tokens"] == 0


def test_query_reasoning_is_separated_when_asked(start_daemon, client_for):
    """include_reasoning puts the thinking text beside the answer, never inside it."""
    d = start_daemon()
    c = client_for(d.base)
    r = c.request("query", {"text": "is the freezer defrosting normally?", "include_reasoning": True})
    assert r["reasoning"] and "</think>" not in r["reasoning"] and "<think>" not in r["result"]["text"]


def test_reasoning_setting_default(start_daemon, client_for):
    """requests.include_reasoning=true makes reasoning the default; a request can still opt out."""
    d = start_daemon(requests={"include_reasoning": True})
    c = client_for(d.base)
    assert c.request("query", {"text": "why?"}).get("reasoning")
    assert "reasoning" not in c.request("query", {"text": "why?", "include_reasoning": False})


def test_response_topic_and_correlation_data_are_honoured(start_daemon, client_for):
    """MQTT 5: the result goes to the Response Topic with the Correlation Data echoed."""
    d = start_daemon()
    c = client_for(d.base)
    reply = f"edged/inbox/{uuid.uuid4().hex}"
    c.subscribe(reply)
    c.publish(f"{d.base}/command", "dim the hallway to 30%", response_topic=reply, correlation_data=b"\x00corr-42")
    msg = c.wait_for(lambda m: m.topic == reply)
    assert msg.correlation_data == b"\x00corr-42"
    assert msg.json()["status"] == "ok" and msg.json()["kind"] == "command"


def test_reply_to_beats_response_topic(start_daemon, client_for):
    """A reply_to field in the payload wins over the MQTT 5 Response Topic."""
    d = start_daemon()
    c = client_for(d.base)
    reply_to, response_topic = f"edged/inbox/r/{uuid.uuid4().hex}", f"edged/inbox/p/{uuid.uuid4().hex}"
    c.subscribe(reply_to)
    c.subscribe(response_topic)
    c.publish(
        f"{d.base}/command",
        json.dumps({"id": "r1", "text": "lights on", "reply_to": reply_to}),
        response_topic=response_topic,
    )
    assert c.wait_for(lambda m: m.topic == reply_to).json()["id"] == "r1"
    assert c.messages(response_topic) == []


def test_plain_text_payload_gets_a_generated_id(start_daemon, client_for):
    """A bare UTF-8 payload is the text; edged generates the id and answers on result/{id}."""
    d = start_daemon()
    c = client_for(d.base)
    c.subscribe(f"{d.base}/result/+")
    c.publish(f"{d.base}/command", "turn on the porch light")
    msg = c.wait_for(lambda m: m.topic.startswith(f"{d.base}/result/"))
    body = msg.json()
    assert body["status"] == "ok" and msg.topic == f"{d.base}/result/{body['id']}" and len(body["id"]) >= 8


def test_soft_switches_and_session_memory(start_daemon, client_for):
    """/no_think on a query switches it off; the session remembers until /think switches back."""
    d = start_daemon()
    c = client_for(d.base)
    s = f"kitchen-{uuid.uuid4().hex[:6]}"
    modes = [
        c.request("query", {"text": "how warm is it? /no_think", "session": s})["mode"],
        c.request("query", {"text": "and the freezer?", "session": s})["mode"],
        c.request("query", {"text": "and the fridge?", "session": "other-" + s})["mode"],
        c.request("command", {"text": "explain the lights /think", "session": s})["mode"],
        c.request("command", {"text": "now the fan", "session": s})["mode"],
        c.request("command", {"text": "now the fan", "session": s, "think": False})["mode"],
    ]
    assert modes == ["no_think", "no_think", "think", "think", "think", "no_think"]


def test_session_history_grows_the_prompt(start_daemon, client_for):
    """A follow-up in the same session carries the previous turn (its prompt is longer)."""
    d = start_daemon()
    c = client_for(d.base)
    first = c.request("command", {"text": "lights on", "session": "hist"})
    second = c.request("command", {"text": "lights on", "session": "hist"})
    fresh = c.request("command", {"text": "lights on"})
    assert second["usage"]["prompt_tokens"] > first["usage"]["prompt_tokens"] == fresh["usage"]["prompt_tokens"]


BAD_INPUTS = [
    (b"{not json", "bad_json"),
    (b"\xff\xfe turn on", "bad_encoding"),
    (b'{"text": ""}', "empty_text"),
    (b'{"text": "   "}', "empty_text"),
    (json.dumps({"text": "x" * 9000}).encode(), "text_too_long"),
    (b'{"text": "hi", "colour": "red"}', "unknown_field"),
    (b'{"text": 42}', "bad_type"),
    (b'{"text": "hi", "think": "yes"}', "bad_type"),
    (b'{"text": "hi", "deadline_ms": -5}', "bad_type"),
    (b'{"id": "bad id with spaces", "text": "hi"}', "bad_id"),
    (b'{"text": "hi", "reply_to": "a/+/b"}', "bad_reply_to"),
    (b'{"text": "hi", "reply_to": "a/#"}', "bad_reply_to"),
    (b"[1, 2]", None),  # not an object: taken as text, answered ok
    (b'{"text": "hi", "context": ' + json.dumps({"k": "v" * 70000}).encode() + b"}", "context_too_large"),
    (b'{"text": "' + b"y" * 300000 + b'"}', "payload_too_large"),
]


def test_bad_inputs_get_structured_errors_and_the_daemon_keeps_serving(start_daemon, client_for):
    """Each bad payload gets status error with its code on result/unknown; a good request after them works."""
    d = start_daemon()
    c = client_for(d.base)
    c.subscribe(f"{d.base}/result/+")
    for payload, code in BAD_INPUTS:
        before = len(c.messages())
        c.publish(f"{d.base}/command", payload)
        msg = c.nth(before)
        body = msg.json()
        if code is None:
            assert body["status"] == "ok", payload[:40]
            continue
        assert (body["status"], body["error"]["code"]) == ("error", code), (payload[:40], body)
        assert msg.topic == f"{d.base}/{ERROR_TOPIC}" and body["error"]["message"]
    assert c.request("command", {"text": "still there?"})["status"] == "ok"


def test_error_keeps_a_valid_id_and_reply_to(start_daemon, client_for):
    """An invalid request whose id and reply_to are valid is answered there, under its id."""
    d = start_daemon()
    c = client_for(d.base)
    reply = f"edged/inbox/{uuid.uuid4().hex}"
    c.subscribe(reply)
    c.publish(f"{d.base}/query", json.dumps({"id": "abc-1", "reply_to": reply, "text": "x", "bogus": 1}))
    body = c.wait_for(lambda m: m.topic == reply).json()
    assert (body["id"], body["status"], body["error"]["code"], body["kind"]) == (
        "abc-1",
        "error",
        "unknown_field",
        "query",
    )


def test_unknown_topic_is_answered_with_an_error(start_daemon, client_for):
    """A request on {base}/something-else gets unknown_topic, under its id."""
    d = start_daemon()
    c = client_for(d.base)
    c.subscribe(f"{d.base}/result/+")
    c.publish(f"{d.base}/comand", json.dumps({"id": "typo-1", "text": "lights off"}))
    body = _result(c, d.base, "typo-1")
    assert (body["status"], body["error"]["code"]) == ("error", "unknown_topic")


def test_full_queue_answers_busy_and_everything_else(start_daemon, client_for):
    """With a queue of one, a burst gets busy errors at once for the overflow, ok for the rest; one result each."""
    d = start_daemon(requests={"queue_size": 1}, model={"scheduler": {"max_batch": 1}})  # one running, one waiting
    c = client_for(d.base)
    c.subscribe(f"{d.base}/result/+")
    ids = [f"burst-{i}" for i in range(8)]
    for rid in ids:
        c.publish(f"{d.base}/query", json.dumps({"id": rid, "text": "why?"}))
    results = {rid: _result(c, d.base, rid) for rid in ids}
    statuses = [r["status"] for r in results.values()]
    busy = [r for r in results.values() if r["status"] == "error"]
    assert busy and all(r["error"]["code"] == "busy" for r in busy)
    assert statuses.count("ok") >= 1 and statuses.count("ok") + len(busy) == len(ids)
    assert all(r["timing_ms"]["total"] == 0 for r in busy)  # refused at once, not after waiting
    assert len(c.messages()) == len(ids)  # exactly one result per request


def test_deadline_passed_in_queue_is_a_timeout(start_daemon, client_for):
    """A request whose deadline_ms passes while it waits behind another gets status timeout."""
    d = start_daemon()
    c = client_for(d.base)
    c.subscribe(f"{d.base}/result/+")
    c.publish(f"{d.base}/query", json.dumps({"id": "long", "text": "think about it"}))
    c.publish(f"{d.base}/command", json.dumps({"id": "late", "text": "lights", "deadline_ms": 1}))
    late = _result(c, d.base, "late")
    assert (late["status"], late["error"]["code"]) == ("timeout", "deadline_exceeded")
    assert _result(c, d.base, "long")["status"] == "ok"


def test_message_expiry_passed_in_queue_is_a_timeout(start_daemon, client_for):
    """MQTT 5 Message Expiry counts like a deadline: expired while queued behind a long query -> timeout.

    Both are queries with one generation at a time: a command would not queue, it overtakes queries."""
    long_think = {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "max_tokens": 160, "thinking_budget": 140}
    d = start_daemon(model={"think": long_think, "scheduler": {"max_batch": 1}})
    c = client_for(d.base)
    c.subscribe(f"{d.base}/result/+")
    c.publish(f"{d.base}/query", json.dumps({"id": "long", "text": "think about it"}))
    c.publish(f"{d.base}/query", json.dumps({"id": "expiring", "text": "lights"}), expiry_s=1)
    long = _result(c, d.base, "long")
    expiring = _result(c, d.base, "expiring")
    assert long["timing_ms"]["total"] > 1000, "the query ahead must outlast the expiry for this test to mean anything"
    assert (expiring["status"], expiring["error"]["code"]) == ("timeout", "deadline_exceeded")


def test_a_command_is_answered_before_a_query_that_came_first(start_daemon, client_for):
    """One queue decides priority: a command sent just after a long query, with one generation per priority,
    runs from the engine's next step on and is answered first; the query still finishes."""
    long_think = {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "max_tokens": 160, "thinking_budget": 140}
    d = start_daemon(model={"think": long_think, "scheduler": {"max_batch": 1}})
    c = client_for(d.base, timeout=120)
    c.subscribe(f"{d.base}/result/+")
    c.publish(f"{d.base}/query", json.dumps({"id": "first-query", "text": "think about it"}))
    c.publish(f"{d.base}/command", json.dumps({"id": "then-command", "text": "lights on"}))
    assert _result(c, d.base, "first-query")["status"] == "ok"
    order = [m.topic.rsplit("/", 1)[1] for m in c.messages() if m.topic.startswith(f"{d.base}/result/")]
    assert order == ["then-command", "first-query"]


def test_deadline_during_generation_stops_it(start_daemon, client_for):
    """A deadline that passes mid-generation stops the model there and answers timeout."""
    long_think = {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "max_tokens": 400, "thinking_budget": 300}
    d = start_daemon(model={"think": long_think})
    c = client_for(d.base)
    r = c.request("query", {"text": "think at length", "deadline_ms": 500})
    assert (r["status"], r["error"]["code"]) == ("timeout", "deadline_exceeded")
    assert 0 < r["usage"]["completion_tokens"] < 400


def test_status_is_retained_online_with_version_and_model(start_daemon, client_for):
    """{base}/status is retained JSON: state online, version, model."""
    d = start_daemon()
    c = client_for(d.base)
    c.subscribe(f"{d.base}/status")
    body = c.wait_for(lambda m: m.topic == f"{d.base}/status" and m.json()["state"] == "online").json()
    assert body["model"] == "tiny-qwen3-random" and body["version"]
    with client_for(d.base) as late:  # ("starting" may still be the retained one when `ready` is set: wait for online)
        late.subscribe(f"{d.base}/status")
        status = late.wait_for(lambda m: m.topic == f"{d.base}/status")
        assert status.retained and status.json() == body


def test_request_published_while_stopped_is_answered_after_start(start_daemon, client_for, tiny_model_dir):
    """The persistent session keeps requests while edged is down; they are answered when it returns."""
    from conftest import make_settings

    settings = make_settings(tiny_model_dir)
    first = start_daemon(settings)
    first.stop()
    c = client_for(first.base)
    c.subscribe(f"{first.base}/result/+")
    c.subscribe(f"{first.base}/status")
    assert c.wait_for(lambda m: m.topic == f"{first.base}/status").json()["state"] == "offline"
    c.publish(f"{first.base}/command", json.dumps({"id": "while-down", "text": "lights off"}))
    start_daemon(settings)
    assert _result(c, first.base, "while-down")["status"] == "ok"


def test_warm_up_fills_the_prompt_cache_before_going_online(start_daemon, client_for):
    """With model.warm_up the registry prompt is prefilled before online: the first command the model answers
    (templates and rules off here) reuses it."""
    registry = Path(__file__).resolve().parent.parent / "config" / "registry-home.toml"
    cached = {}
    for warm in (False, True):  # each its own engine: an empty prefix cache
        d = start_daemon(
            own_engine=True,
            model={"warm_up": warm},
            devices={"registry": str(registry), "dispatch": False},
            commands={"local": False},
        )
        first = client_for(d.base, timeout=120).request("command", {"text": "turn on the kitchen lights"})
        cached[warm] = (first["usage"]["cached_tokens"], first["usage"]["prompt_tokens"])
    assert cached[False][0] == 0
    assert cached[True][0] > 0.9 * cached[True][1]  # all but the request's own words


def test_stop_closes_the_engine_it_loaded(start_daemon, client_for):
    """The engine a daemon loaded is closed by its stop(): no step runs after it, and new work is refused."""
    from edged.engine.types import GenerationRequest
    from edged.settings import SamplingSettings

    d = start_daemon(own_engine=True)
    assert client_for(d.base).request("query", {"text": "is pump 3 ok?"})["status"] == "ok"
    engine = d.engine
    d.stop()
    steps = engine.scheduler.steps
    failed: list[object] = []
    engine.submit(
        GenerationRequest(
            [{"role": "user", "content": "hi"}],
            "no_think",
            SamplingSettings(temperature=0.0, top_p=1.0, top_k=0, max_tokens=4),
            None,
        ),
        failed.append,
    )
    assert isinstance(failed[0], RuntimeError) and "closed" in str(failed[0])
    assert engine.scheduler.steps == steps
