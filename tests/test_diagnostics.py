"""Diagnostics: telemetry from the bus, summaries computed by edged, thinking + schema-bound answers,
progress and cancellation."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import pytest
from conftest import make_settings

from edged.devices.registry import load_registry
from edged.diagnostics import simulator
from edged.diagnostics.diagnosis import Diagnostics, diagnosis_model, telemetry_block
from edged.diagnostics.summaries import citable, relevant, slope_per_minute, summarise
from edged.diagnostics.telemetry import SensorSpec, TelemetrySettings, TelemetryStore, read_value


def test_read_value_from_bare_numbers_and_json_paths():
    assert read_value(b" 7.5\n", None) == 7.5
    assert read_value(b'{"a": {"b": [1, 2.5]}}', "a.b.1") == 2.5
    for junk, path in ((b"hot", None), (b'{"a": 1}', "b"), (b"nan", None), (b'{"a": true}', "a"), (b"\xff", None)):
        with pytest.raises((ValueError, KeyError, UnicodeDecodeError)):
            read_value(junk, path)


def _store(clock, **kw) -> TelemetryStore:
    spec = SensorSpec(id="vibration", topic="plant/+/vibration", path="value", unit="mm/s", normal_max=4.5, stale_s=120)
    return TelemetryStore(TelemetrySettings(sensors=[spec], **kw), clock=clock)


def test_store_windows_by_time_and_count_and_counts_junk():
    now = [1000.0]
    store = _store(lambda: now[0], window_s=300, max_samples=3, max_series=2)
    for i in range(5):
        now[0] += 60
        assert store.ingest("plant/pump_1/vibration", json.dumps({"value": i}).encode())
    assert [v for _, v in store.series()[0].samples] == [2, 3, 4]  # count bound
    now[0] += 250
    assert [v for _, v in store.series()[0].samples] == [4]  # older than 300 s dropped
    assert not store.ingest("plant/pump_1/vibration", b"garbage") and store.junk == 1
    assert not store.ingest("plant/pump_1/other", b"1")  # no sensor declared there
    for p in (2, 3):
        store.ingest(f"plant/pump_{p}/vibration", b'{"value": 1}')
    assert [s.key for s in store.series()] == ["pump_2/vibration", "pump_3/vibration"]  # series bound, LRU


def test_summary_numbers_match_hand_computation():
    """Values 1,2,3,4,10 a minute apart: mean 4, pstdev 3.162, slope 20/10 = 2.0/min, last z = (10-2.5)/1.118."""
    now = [0.0]
    store = _store(lambda: now[0])
    for v in (1, 2, 3, 4, 10):
        store.ingest("plant/pump_3/vibration", json.dumps({"value": v}).encode())
        now[0] += 60
    s = summarise(store.series()[0], now=now[0])
    assert (s.n, s.last, s.min, s.max, s.age_s) == (5, 10, 1, 10, 60)
    assert s.mean == pytest.approx(4.0) and s.stdev == pytest.approx(math.sqrt(10))
    assert s.slope_per_min == pytest.approx(2.0)
    assert s.z_last == pytest.approx(7.5 / math.sqrt(1.25))
    assert s.out_of_range and not s.stale and s.abnormal
    assert "OUT OF RANGE" in s.line() and "trend +2/min" in s.line()
    # what a finding may cite: last, age, min, max, mean, sd, count, trend, z, limit; as the line shows them
    assert citable(s) == [10, 60, 1, 4, 3.162, 5, 2, 6.7, 4.5], s.line()
    assert summarise(store.series()[0], now=now[0] + 500).stale
    assert slope_per_minute([(0, 5)]) is None


def test_relevance_by_name_context_or_abnormality():
    now = [0.0]
    store = _store(lambda: now[0])
    for p, v in (("pump_1", 2.0), ("pump_3", 9.0), ("pump_4", 2.1)):
        store.ingest(f"plant/{p}/vibration", json.dumps({"value": v}).encode())
    series = store.series()
    sums = [summarise(s, now[0]) for s in series]
    assert [s.key for s in relevant(sums, series, "why is pump 4 noisy?", None, limit=5)] == ["pump_4/vibration"]
    assert [s.key for s in relevant(sums, series, "anything odd?", {"sensors": ["pump_1/vibration"]}, limit=5)] == [
        "pump_1/vibration"
    ]
    assert [s.key for s in relevant(sums, series, "anything odd?", None, limit=5)] == [
        "pump_3/vibration"
    ]  # out of range


def test_relevance_by_registry_names_areas_plurals_and_typos():
    """Registry names, aliases and areas find a device's sensors; so do "pump3", "pumps 1 and 2" and small typos."""
    now = [0.0]
    store = _store(lambda: now[0])
    for p in ("pump_1", "pump_2", "pump_3", "pump_4"):
        store.ingest(f"plant/{p}/vibration", b'{"value": 2.0}')
    series = store.series()
    sums = [summarise(s, now[0]) for s in series]
    registry = load_registry(PLANT)
    diag = Diagnostics(store, budget_tokens=600, max_sensors=10, registry=lambda: registry, clock=lambda: now[0])

    def asked(text: str) -> list[str]:
        return diag.prepare(text, context=None, history=()).sensors

    assert asked("is anything wrong in the tank farm?") == ["pump_2/vibration", "pump_3/vibration"]  # the area's pumps
    assert (
        asked("how is the circulation pump?") == asked("how is the circulaton pump?") == ["pump_3/vibration"]
    )  # alias, typo
    assert asked("why is pump3 vibrating") == ["pump_3/vibration"]
    assert asked("what about pumps 1 and 2?") == ["pump_1/vibration", "pump_2/vibration"]
    assert asked("is the feed pump ok?") == ["pump_1/vibration"]
    assert asked("is the train late?") == []  # not "drain"; nothing abnormal either
    assert [s.key for s in relevant(sums, series, "and pump 4?", None, limit=5)] == [
        "pump_4/vibration"
    ]  # no registry: ids


def test_severity_is_never_below_what_edged_flagged():
    """Out of range is at least a warning whatever the model says; the raise is noted; a higher rating stays."""
    now = [0.0]
    store = _store(lambda: now[0])
    store.ingest("plant/pump_3/vibration", b'{"value": 9.0}')
    store.ingest("plant/pump_1/vibration", b'{"value": 2.0}')
    query = Diagnostics(store, budget_tokens=600, max_sensors=5, clock=lambda: now[0]).prepare(
        "pump 3?", context=None, history=()
    )
    assert query.floor == "warning"
    answer = {
        "summary": "fine",
        "severity": "ok",
        "findings": [],
        "likely_causes": [],
        "recommended_actions": [],
        "data_gaps": [],
    }
    result, problem = query.outcome(json.dumps(answer))
    assert problem is None and result["diagnosis"]["severity"] == "warning" and result["severity_floor"] == "warning"
    assert result["notes"] == ["severity raised from ok to warning: edged flagged pump_3/vibration"]
    result, _ = query.outcome(json.dumps({**answer, "severity": "critical"}))
    assert result["diagnosis"]["severity"] == "critical" and "notes" not in result
    assert query.outcome('{"summary": "no"}') == (None, "the answer is not a valid diagnosis: 5 error(s)")
    diag = Diagnostics(store, budget_tokens=600, max_sensors=5, clock=lambda: now[0])
    assert diag.prepare("pump 1?", context=None, history=()).floor == "ok"
    now[0] += 1000  # no reading for 1000 s: stale, a data gap, though within range
    assert diag.prepare("pump 1?", context=None, history=()).floor == "info"


def test_diagnosis_schema_only_cites_shown_sensors():
    model = diagnosis_model({"pump_3/vibration": [7.9, 4.5], "pump_1/vibration": []})
    good = {
        "summary": "s",
        "severity": "warning",
        "findings": [{"sensor": "pump_3/vibration", "value": 7.9, "note": "high"}],
        "likely_causes": [{"cause": "bearing wear", "confidence": 0.7}],
        "recommended_actions": [{"action": "inspect"}],
        "data_gaps": [],
    }
    assert model.model_validate(good)
    with pytest.raises(ValueError):
        model.model_validate({**good, "findings": [{"sensor": "pump_9/vibration", "value": 1, "note": ""}]})
    with pytest.raises(ValueError):
        model.model_validate({**good, "severity": "apocalyptic"})
    for sensor, value in (
        ("pump_3/vibration", 8.0),
        ("pump_1/vibration", 7.9),
    ):  # a number not shown; no readings shown
        with pytest.raises(ValueError):
            model.model_validate({**good, "findings": [{"sensor": sensor, "value": value, "note": ""}]})


PLANT = Path(__file__).resolve().parent.parent / "config" / "registry-plant.toml"


def test_recommended_actions_may_name_only_the_shown_devices_registry_actions():
    """pump_3's sensors are shown: its registry actions are offered in the prompt and the schema; no other device's."""
    now = [0.0]
    store = _store(lambda: now[0])
    for p, v in (("pump_1", 2.0), ("pump_3", 9.0)):
        store.ingest(f"plant/{p}/vibration", json.dumps({"value": v}).encode())
    registry = load_registry(PLANT)
    diag = Diagnostics(store, budget_tokens=600, max_sensors=5, registry=lambda: registry, clock=lambda: now[0])
    query = diag.prepare("why is pump 3 vibrating?", context=None, history=())
    assert query.sensors == query.abnormal == ["pump_3/vibration"]  # 9 mm/s: out of range
    model, prompt = query.model, query.messages[-1]["content"]
    assert "- pump_3: set_speed(speed 0-100 %), start, stop" in prompt and "pump_1:" not in prompt
    base = {"summary": "s", "severity": "warning", "findings": [], "likely_causes": [], "data_gaps": []}

    def step(do):
        return {**base, "recommended_actions": [{"action": "slow it down", "do": do}]}

    assert model.model_validate(step({"device": "pump_3", "action": "set_speed", "params": {"speed": 40}}))
    assert model.model_validate(
        {**base, "recommended_actions": [{"action": "inspect the bearing"}]}
    )  # "do" is optional
    for wrong in (
        {"device": "pump_1", "action": "stop", "params": {}},  # not shown
        {"device": "pump_3", "action": "open", "params": {}},  # not its action
        {"device": "pump_3", "action": "set_speed", "params": {"speed": 400}},
    ):  # out of range
        with pytest.raises(ValueError):
            model.model_validate(step(wrong))
    unrelated = (
        Diagnostics(store, budget_tokens=600, max_sensors=5, clock=lambda: now[0])
        .prepare("why is pump 3 vibrating?", context=None, history=())
        .model
    )
    with pytest.raises(ValueError):  # no registry: free-text steps only
        unrelated.model_validate(step({"device": "pump_3", "action": "stop", "params": {}}))


SENSORS = [
    {"id": "vibration", "topic": "{p}/+/vibration", "path": "value", "unit": "mm/s", "normal_max": 4.5},
    {"id": "bearing_temp", "topic": "{p}/+/bearing_temp", "path": "value", "unit": "°C", "normal_max": 70},
]
THINK = {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "max_tokens": 2048, "thinking_budget": 16}


@pytest.fixture
def line(start_daemon, client_for):
    """edged with telemetry from a private topic prefix, structured diagnoses on, readings from the simulator."""
    prefix = f"line-{uuid.uuid4().hex[:8]}"
    sensors = [{k: (v.format(p=prefix) if k == "topic" else v) for k, v in s.items()} for s in SENSORS]
    d = start_daemon(
        telemetry={"sensors": sensors},
        model={"think": THINK},
        devices={"registry": str(PLANT), "dispatch": False},
        diagnostics={"structured": True, "progress_interval_s": 0.2},
    )
    c = client_for(d.base, timeout=120)
    n = simulator.run(c.publish, prefix, 4, fault="bearing", fault_pump=3, steps=6, interval_s=0, wait=lambda _s: None)
    c.publish(f"{prefix}/pump_1/vibration", b"not a number")
    c.request("command", {"text": "sync"})  # answered after every reading above was taken in
    return d, c, prefix, n


def test_readings_from_the_bus_are_ingested_and_junk_counted(line):
    d, _, _, n = line
    keys = [s.key for s in d.telemetry.series()]
    assert "pump_3/vibration" in keys and len(keys) == 8  # 4 pumps x 2 declared signals
    assert d.telemetry.accepted == 4 * 2 * 6 and d.telemetry.junk == 1 and n == 4 * 5 * 6


def test_query_thinks_then_answers_a_schema_valid_diagnosis(line):
    """The random model never closes </think>: the budget does, and the answer is still a valid diagnosis."""
    d, c, _, _ = line
    r = c.request("query", {"text": "why is pump 3 vibrating?", "include_reasoning": True})
    assert (r["status"], r["mode"]) == ("ok", "think"), r
    assert r["usage"]["reasoning_tokens"] == THINK["thinking_budget"] and "reasoning" in r
    assert r["result"]["thinking"] == {"tokens": THINK["thinking_budget"], "closed_by": "budget"}
    diagnosis = r["result"]["diagnosis"]
    assert r["result"]["severity_floor"] == "warning"  # pump 3's vibration is out of its normal range
    assert diagnosis["severity"] in ("warning", "critical")
    assert "pump_3/vibration" in r["result"]["sensors"]
    assert "pump_3/vibration" in r["result"]["abnormal"] and set(r["result"]["abnormal"]) <= set(r["result"]["sensors"])
    assert all(f["sensor"] in r["result"]["sensors"] for f in diagnosis["findings"])
    owners = {s.split("/")[0] for s in r["result"]["sensors"]}
    assert all(a["do"] is None or a["do"]["device"] in owners for a in diagnosis["recommended_actions"])


def test_progress_then_cancel(line):
    """A long query reports progress on {base}/progress/{id}; {base}/cancel stops it with code cancelled."""
    d, c, _, _ = line
    c.subscribe(f"{d.base}/progress/+")
    c.subscribe(f"{d.base}/result/+")
    c.publish(f"{d.base}/query", json.dumps({"id": "long-q", "text": "think about pump 3", "think": True}))
    started = c.wait_for(lambda m: m.topic == f"{d.base}/progress/long-q").json()
    assert started["phase"] == "started" and started["tokens"] == 0
    c.wait_for(lambda m: m.topic == f"{d.base}/progress/long-q" and m.json()["tokens"] > 0)
    c.publish(f"{d.base}/cancel", json.dumps({"id": "long-q"}))
    r = c.wait_for(lambda m: m.topic == f"{d.base}/result/long-q").json()
    assert (r["status"], r["error"]["code"]) == ("error", "cancelled")
    assert 0 < r["usage"]["completion_tokens"] < THINK["max_tokens"]


def test_follow_up_in_a_session_carries_the_previous_answer(line):
    d, c, _, _ = line
    first = c.request("query", {"text": "why is pump 3 vibrating?", "session": "shift-1"})
    second = c.request("query", {"text": "and what about pump 4?", "session": "shift-1"})
    assert first["status"] == second["status"] == "ok"
    assert second["usage"]["prompt_tokens"] > first["usage"]["prompt_tokens"]
    assert "pump_4/vibration" in second["result"]["sensors"]


def test_smollm2_grounds_a_diagnosis_in_the_anomalous_readings(start_daemon, smollm2_dir, smol_engine, client_for):
    """A real small model (no thinking mode) answers the schema directly and cites the faulty pump's numbers."""
    prefix = f"line-{uuid.uuid4().hex[:8]}"
    sensors = [{k: (v.format(p=prefix) if k == "topic" else v) for k, v in s.items()} for s in SENSORS]
    model = {
        "path": str(smollm2_dir),
        "name": "SmolLM2-135M-Instruct",
        "no_think": {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "max_tokens": 700},
    }
    settings = make_settings(smollm2_dir, model=model, telemetry={"sensors": sensors}, diagnostics={"structured": True})
    d = start_daemon(settings, use_engine=smol_engine)
    c = client_for(d.base, timeout=300)
    simulator.run(c.publish, prefix, 4, fault="bearing", fault_pump=3, steps=12, interval_s=0, wait=lambda _s: None)
    r = c.request("query", {"text": "why is pump 3 vibrating?"})
    assert r["status"] == "ok" and r["mode"] == "no_think", r
    last = {s.key: s.samples[-1][1] for s in d.telemetry.series()}
    assert r["result"]["severity_floor"] == "warning" and r["result"]["diagnosis"]["severity"] in (
        "warning",
        "critical",
    )
    cited = {(f["sensor"], f["value"]) for f in r["result"]["diagnosis"]["findings"]}
    assert any(sensor.startswith("pump_3/") and abs(value - last[sensor]) < 0.01 for sensor, value in cited), cited


def test_raw_readings_fill_the_token_budget_newest_first_across_sensors():
    """Summaries always; then raw readings a round at a time (each sensor's newest first) until the budget ends."""
    now = [0.0]
    store = _store(lambda: now[0])
    for i in range(30):
        for p in ("pump_1", "pump_2"):
            store.ingest(f"plant/{p}/vibration", json.dumps({"value": 2 + i / 100}).encode())
        now[0] += 10
    series = store.series()
    chosen = [summarise(s, now[0]) for s in series]

    def words(text: str) -> int:  # a stand-in tokenizer: one token per space-separated word
        return len(text.split())

    def raw(block: str) -> dict[str, list[str]]:
        return {line.split()[0]: line.split("): ", 1)[1].split(", ") for line in block.splitlines() if "recent" in line}

    summaries = telemetry_block(chosen, series, budget_tokens=1, count=words)
    assert summaries.count("\n") == 2 and not raw(summaries)  # the summaries fit whatever the budget
    base = words(summaries)
    # each reading "0: 2.29" costs 2 words + 1 separator; each sensor's first also its label (5 words)
    two_rounds = base + 2 * (5 + 3) + 2 * 3
    some = raw(telemetry_block(chosen, series, budget_tokens=two_rounds, count=words))
    assert some == {"pump_1/vibration": ["0: 2.29", "10: 2.28"], "pump_2/vibration": ["0: 2.29", "10: 2.28"]}
    short = raw(telemetry_block(chosen, series, budget_tokens=two_rounds - 1, count=words))
    assert short == {"pump_1/vibration": ["0: 2.29", "10: 2.28"], "pump_2/vibration": ["0: 2.29"]}
    everything = raw(telemetry_block(chosen, series, budget_tokens=10_000, count=words))
    assert [len(v) for v in everything.values()] == [20, 20]  # at most 20 a sensor
