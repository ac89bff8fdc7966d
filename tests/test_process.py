"""`edged run` as a real process: signals, exit codes, last will, nothing lost across restarts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid

import pytest
from conftest import PORCH_REGISTRY, SMOL_GREEDY_ENV
from proc import RUN_TIMEOUT, Edged, write_config
from tally import Tally


@pytest.fixture
def node(make_node):
    return make_node()


@pytest.fixture
def make_node(broker, tiny_model_dir, tmp_path, client_for):
    """``make_node(extra_toml, env)``: (base, client, start); ``start()`` runs `edged run` until it is online."""
    procs: list[Edged] = []
    yield lambda extra="", env=None: _node(tiny_model_dir, tmp_path, client_for, procs, extra, env)
    for proc in procs:
        if proc.proc.poll() is None:
            proc.stop(signal.SIGKILL)


def _node(tiny_model_dir, tmp_path, client_for, procs, extra, env):
    node_id = f"p-{uuid.uuid4().hex[:10]}"
    # One generation at a time: these tests count requests that wait behind the one generating.
    config = write_config(
        tmp_path / "edged.toml", tiny_model_dir, node_id, "[model.scheduler]\nmax_batch = 1\n" + extra
    )
    base = f"edged/{node_id}"
    client = client_for(base, timeout=RUN_TIMEOUT)
    client.subscribe(f"{base}/status")
    client.subscribe(f"{base}/result/+")
    client.subscribe(f"{base}/progress/+")

    def start() -> Edged:
        seen = len(client.messages(f"{base}/status"))
        proc = Edged(config, tmp_path / "edged.log", env)
        procs.append(proc)
        client.wait_for(
            lambda m: (
                m.topic == f"{base}/status"
                and m.json()["state"] == "online"
                and client.messages(f"{base}/status").index(m) >= seen
            )
        )
        return proc

    return base, client, start


def _answers(client, base: str) -> list[str]:
    return [m.json()["id"] for m in client.messages() if m.topic.startswith(f"{base}/result/")]


def test_sigterm_mid_request_loses_nothing(node):
    """SIGTERM: the running request finishes, queued ones wait at the broker, exit 0; each answered once."""
    base, client, start = node
    edged = start()
    ids = [f"q{i}" for i in range(4)]
    for rid in ids:
        client.publish(f"{base}/query", json.dumps({"id": rid, "text": "why is pump 3 vibrating?"}))
    client.wait_for(lambda m: m.topic == f"{base}/result/q0")
    assert edged.stop(signal.SIGTERM) == 0
    before_restart = _answers(client, base)
    assert client.messages(f"{base}/status")[-1].json()["state"] == "offline"
    left = [e for e in edged.events() if e["event"] == "requests_left_for_redelivery"]
    assert len(before_restart) < len(ids) and left, "SIGTERM should have landed with work still queued"

    start()
    for rid in ids:
        client.wait_for(lambda m, rid=rid: m.topic == f"{base}/result/{rid}")
    answers = _answers(client, base)
    assert sorted(answers) == sorted(ids), f"each request answered exactly once, got {answers}"
    assert all(m.json()["status"] == "ok" for m in client.messages() if "/result/" in m.topic)


def _generating(client, base: str, rid: str) -> None:
    """Wait until ``rid`` has started: the request before it was answered and acknowledged (one worker)."""
    client.wait_for(lambda m: m.topic == f"{base}/progress/{rid}")


def test_sigkill_mid_generation_the_request_is_redelivered_and_answered_once(node):
    """A crash mid-generation: the broker sets status offline; the unacknowledged request is run again after
    restart and answered; the one answered before the crash is not answered again."""
    base, client, start = node
    edged = start()
    tally = Tally("sigkill_mid_generation")
    before, running = (tally.send(client, "query", {"text": "think long"}) for _ in range(2))
    _generating(client, base, running)
    edged.stop(signal.SIGKILL)
    client.wait_for(lambda m: m.topic == f"{base}/status" and m.json()["state"] == "offline")
    assert not client.messages(f"{base}/result/{running}")
    start()
    assert client.wait_for(lambda m: m.topic == f"{base}/result/{running}").json()["status"] == "ok"
    tally.fence(client)
    tally.count(client)
    resumed = [e["id"] for e in edged.events() if e["event"] == "request_resumed"]
    assert running in resumed and set(resumed) <= {before, running}, resumed
    # Nothing lost and the running request answered once; the one finished just before the kill may be
    # answered again when the kill came before the broker's PUBACK (at-least-once), never run twice.
    sent, answered, _duplicated, lost = tally.numbers()
    assert (answered, lost) == (sent, 0) and len(client.messages(f"{base}/result/{running}")) == 1, tally.line()


def test_sigkill_with_a_device_command_waiting_dispatches_it_once(make_node, tmp_path, smollm2_dir):
    """A command sent while a query generates, then edged is killed: the command runs once and its device
    command reaches the device topic once (the ledger claims it before publishing). The query is resumed
    after the restart; the command too, unless it was answered before the kill (templates resolve it
    without waiting for the model)."""
    prefix = f"crash-{uuid.uuid4().hex[:8]}"
    registry = tmp_path / "registry.toml"
    registry.write_text(PORCH_REGISTRY.format(prefix=prefix))
    env = {**SMOL_GREEDY_ENV, "EDGED_MODEL__PATH": str(smollm2_dir)}
    base, client, start = make_node(f'[devices]\nregistry = "{registry}"\n', env)
    client.subscribe(f"{prefix}/#")
    edged = start()
    tally = Tally("sigkill_device_command")
    query = tally.send(client, "query", {"text": "think long"})
    command = tally.send(client, "command", {"text": "turn on the porch light"})
    _generating(client, base, query)
    edged.stop(signal.SIGKILL)
    start()
    result = client.wait_for(lambda m: m.topic == f"{base}/result/{command}", timeout=200).json()  # SmolLM2 on 2 cores
    tally.fence(client, timeout=200)
    tally.count(client)
    dispatched = [a for a in result["result"]["actions"] if a["dispatched"]]
    device = [m for m in client.messages() if m.topic.startswith(prefix + "/")]
    print(f"fault_devices fault=sigkill_device_command dispatched={len(dispatched)} device_commands={len(device)}")
    earlier = result["result"].get("already_dispatched", [])  # killed between the dispatch and the stored result
    assert result["status"] == "ok" and (dispatched or earlier), result
    assert len(device) == max(len(dispatched), len(earlier)) == 1, "a device command went out twice (or not at all)"
    resumed = {e["id"] for e in edged.events() if e["event"] == "request_resumed"}
    assert query in resumed and resumed <= {query, command}, resumed
    sent, answered, _duplicated, lost = tally.numbers()  # a result sent just before the kill may come again
    assert (answered, lost) == (sent, 0), tally.line()


def test_run_logs_json_events_with_request_fields(node):
    """Under a non-terminal stderr, logs are JSON lines; each request logs one request_done with its numbers."""
    base, client, start = node
    edged = start()
    client.publish(f"{base}/command", json.dumps({"id": "log-1", "text": "lights on"}))
    client.wait_for(lambda m: m.topic == f"{base}/result/log-1")
    assert edged.stop() == 0
    done = [e for e in edged.events() if e["event"] == "request_done"]
    assert len(done) == 1
    assert {"id", "kind", "mode", "status", "prompt_tokens", "completion_tokens", "total_ms", "queue_ms"} <= done[
        0
    ].keys()
    assert done[0]["id"] == "log-1" and done[0]["level"] == "info" and done[0]["timestamp"]
    assert any(e["event"] == "stopped" and e["peak_rss_mb"] > 0 for e in edged.events())


def test_run_with_a_bad_config_exits_2(tmp_path):
    """An invalid configuration is reported with its field path and exit code 2, before anything starts."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt]\nport = 70000\n")
    proc = subprocess.run(
        [sys.executable, "-m", "edged.cli", "run", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert proc.returncode == 2 and "mqtt.port" in proc.stderr


def test_run_with_a_missing_model_exits_2_naming_the_path(tmp_path):
    """A model path that does not exist stops start-up with a clear event naming it."""
    config = write_config(tmp_path / "edged.toml", tmp_path / "nowhere", "p-missing")
    proc = subprocess.run(
        [sys.executable, "-m", "edged.cli", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert proc.returncode == 2 and str(tmp_path / "nowhere") in proc.stdout + proc.stderr
