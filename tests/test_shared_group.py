"""Scale-out on the broker: three `edged run` processes share the requests through an MQTT 5 shared
subscription (`mqtt.shared_group`). One is killed (SIGKILL) in the middle of a burst and restarted, as a
service manager would: every request is answered, none twice, and the split of the work is printed.

What Mosquitto does (2.0): a member's persistent session stays in the group while it is down, so the
requests in flight to it, and its round-robin share of those published meanwhile, wait in its session
until it is back under the same client id. They are not handed to the other members.

If the kill lands after the broker took a result but before edged heard it confirmed, the restarted
member finds the stored result in its ledger and publishes that copy again, marked ``replayed``: the
request is not run twice, and a caller can drop the copy by id.
"""

from __future__ import annotations

import json
import shutil
import signal
import uuid
from collections import Counter

import pytest
from proc import Edged, Mosquitto, free_port, quick_work, write_config

from edged.bus.client import EdgedClient

pytestmark = pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs the mosquitto binary")

BURST = 30  # each of two bursts


def _done_ids(proc: Edged) -> list[str]:
    return [e["id"] for e in proc.events() if e.get("event") == "request_done" and e["id"].startswith("s")]


def _online(c: EdgedClient, topic: str, after: int = 0) -> None:
    c.wait_for(lambda m: m.topic == topic and m.json()["state"] == "online", timeout=120, after=after)


def test_three_instances_share_requests_and_survive_a_kill(tmp_path, tiny_model_dir):
    broker = Mosquitto(free_port(), tmp_path, "allow_anonymous true\nmax_queued_messages 20000\n")
    broker.start()
    uid = uuid.uuid4().hex[:8]
    base = f"edged/pool-{uid}"
    env = {"EDGED_MQTT__PORT": str(broker.port), "EDGED_BASE_TOPIC": base, "EDGED_MQTT__SHARED_GROUP": "pool"}
    nodes = [f"{uid}-{n}" for n in "abc"]
    configs = {
        n: write_config(tmp_path / f"{n}.toml", tiny_model_dir, n, quick_work(queue_size=2 * BURST)) for n in nodes
    }
    procs = {n: Edged(configs[n], tmp_path / f"{n}.log", env) for n in nodes}
    victim = nodes[1]
    revived: Edged | None = None
    try:
        with EdgedClient(base, port=broker.port, timeout=120) as c:
            c.subscribe(f"{base}/status/+")
            for n in nodes:
                _online(c, f"{base}/status/{n}")
            c.subscribe(f"{base}/result/+")
            ids = [f"s{i}" for i in range(2 * BURST)]
            for rid in ids[:BURST]:
                c.publish(f"{base}/command", json.dumps({"id": rid, "text": "lights on"}))
            _wait_results(c, base, BURST // 3)
            assert procs[victim].stop(signal.SIGKILL) == -signal.SIGKILL
            before_kill = _done_ids(procs[victim])
            mark = c.count()
            c.wait_for(
                lambda m: m.topic == f"{base}/status/{victim}" and m.json()["state"] == "offline", after=0
            )  # last will
            for rid in ids[BURST:]:
                c.publish(f"{base}/command", json.dumps({"id": rid, "text": "lights on"}))
            revived = Edged(configs[victim], tmp_path / f"{victim}-restarted.log", env)  # same client id: its session
            _online(c, f"{base}/status/{victim}", after=mark)
            _wait_results(c, base, len(ids))
            final = c.request("command", {"text": "anyone there?"})
            results = [m.json() for m in c.messages() if m.topic.startswith(f"{base}/result/s")]
    finally:
        for p in [*(p for n, p in procs.items() if n != victim), *([revived] if revived else [])]:
            p.stop()
        broker.stop()
    originals = Counter(r["id"] for r in results if not r.get("replayed"))
    first = {r["id"]: r for r in results if not r.get("replayed")}
    copies = [r for r in results if r.get("replayed")]
    split = {n: len(_done_ids(procs[n])) for n in nodes if n != victim}
    split[f"{victim} (killed)"] = len(before_kill)
    after_restart = _done_ids(revived)
    split[f"{victim} (restarted)"] = len(after_restart)
    late = sum(1 for rid in after_restart if int(rid[1:]) >= BURST)
    replayed = {
        e["id"] for e in revived.events() if e.get("event") == "duplicate_request" and e.get("verdict") == "replay"
    }
    print(
        f"\nshared group: {len(ids)} requests, split {split}; "
        f"{late} of the restarted member's were published while it was down; "
        f"{len(copies)} stored result(s) replayed after the kill"
    )
    assert set(originals) == set(ids), f"unanswered: {sorted(set(ids) - set(originals))}"
    assert max(originals.values()) == 1, f"answered twice: {[i for i, n in originals.items() if n > 1]}"
    for copy in copies:  # a result the killed member published, sent again from its ledger: the same answer
        assert copy["id"] in replayed and copy == {**first[copy["id"]], "replayed": True}
    assert all(r["status"] == "ok" for r in results) and final["status"] == "ok"
    assert all(v > 0 for v in split.values()), "every member, and the restarted one, did part of the work"
    done = [*(i for n in nodes if n != victim for i in _done_ids(procs[n])), *before_kill, *after_restart]
    assert len(done) == len(set(done)), "a request ran twice"
    # Each request ran in exactly one process; a replayed one ran in the killed member, which may have
    # died between publishing its result and logging it.
    assert set(done) | {c["id"] for c in copies} == set(ids)


def _wait_results(c: EdgedClient, base: str, n: int) -> None:
    """Wait until results for ``n`` distinct burst requests have arrived."""
    while len({m.topic for m in c.messages() if m.topic.startswith(f"{base}/result/s")}) < n:
        c.nth(c.count(), timeout=120)
