"""The request ledger on a real SQLite file: duplicates by id and reply topic, restarts, device claims, pruning."""

from __future__ import annotations

import json
from pathlib import Path

from edged.bus.mqtt import Inbound
from edged.devices.commands import DeviceControl
from edged.devices.confirmations import Confirmations
from edged.devices.registry import RegistryStore
from edged.devices.state import DeviceStates
from edged.service.ledger import MAX_COPIES, Ledger, Verdict
from edged.settings import default_state_dir

SMALL = Path(__file__).resolve().parent / "data" / "registry-small.toml"
PORCH_ON = json.dumps({"actions": [{"device": "porch_light", "action": "turn_on", "params": {}}], "say": "ok"})


def _ledger(tmp_path: Path, **kw) -> Ledger:
    return Ledger(tmp_path / "ledger.sqlite3", **{"window_s": 3600, "max_rows": 1000, **kw})


def _copy(mid: int, qos: int = 1, size: int = 10) -> Inbound:
    return Inbound(
        "edged/x/command", b"x" * size, False, False, "edged/inbox/a", b"c", None, 0.0, mid, qos, (("k", "v"),)
    )


def test_a_copy_in_progress_is_pending_and_released_with_the_original(tmp_path):
    ledger = _ledger(tmp_path)
    assert ledger.admit("r1", "t/r1", redelivered=False).verdict is Verdict.NEW
    assert ledger.admit("r1", "t/r1", redelivered=True, origin=_copy(1)).verdict is Verdict.PENDING
    assert ledger.admit("r1", "other/topic", redelivered=False).verdict is Verdict.NEW  # another caller's id space
    ledger.settle("r1", "t/r1", b'{"id":"r1","status":"ok"}')
    assert (
        ledger.admit("r1", "t/r1", redelivered=False, origin=_copy(2)).verdict is Verdict.PENDING
    )  # result not confirmed yet
    assert [m.mid for m in ledger.confirmed("r1", "t/r1")] == [1, 2]
    assert ledger.state("r1", "t/r1") == "sent"


def test_another_request_reusing_an_id_is_a_conflict_not_a_copy(tmp_path):
    ledger = _ledger(tmp_path)
    assert ledger.admit("r1", "t/r1", redelivered=False, digest="aaa").verdict is Verdict.NEW
    assert ledger.admit("r1", "t/r1", redelivered=False, digest="bbb").verdict is Verdict.CONFLICT
    assert (
        ledger.admit("r1", "t/r1", redelivered=True, digest="aaa").verdict is Verdict.PENDING
    )  # the same request again
    ledger.settle("r1", "t/r1", b'{"id":"r1","status":"ok"}')
    ledger.confirmed("r1", "t/r1")
    assert ledger.admit("r1", "t/r1", redelivered=False, digest="bbb").verdict is Verdict.CONFLICT  # answered or not


def test_an_answered_request_is_replayed_to_a_caller_and_only_acknowledged_to_the_broker(tmp_path):
    ledger = _ledger(tmp_path)
    ledger.admit("r1", "t/r1", redelivered=False)
    ledger.settle("r1", "t/r1", b'{"id":"r1"}')
    ledger.confirmed("r1", "t/r1")
    again = ledger.admit("r1", "t/r1", redelivered=False)  # the caller sent it again
    assert (again.verdict, again.result) == (Verdict.REPLAY, b'{"id":"r1"}')
    assert ledger.admit("r1", "t/r1", redelivered=True).verdict is Verdict.ANSWERED  # the broker redelivered it


def test_after_a_crash_unanswered_requests_run_again_and_unconfirmed_results_are_replayed(tmp_path):
    before = _ledger(tmp_path)
    before.admit("running", "t", redelivered=False)
    before.admit("answered", "t", redelivered=False)
    before.settle("answered", "t", b'{"id":"answered"}')  # stored, the broker never confirmed it
    before.close()  # the process dies here
    after = _ledger(tmp_path)
    assert after.admit("running", "t", redelivered=True).verdict is Verdict.RESUMED
    assert after.admit("running", "t", redelivered=True).verdict is Verdict.PENDING  # now in progress in this run
    assert after.admit("answered", "t", redelivered=True).verdict is Verdict.REPLAY


def test_a_busy_refusal_is_forgotten_so_a_retry_runs(tmp_path):
    ledger = _ledger(tmp_path)
    ledger.admit("r1", "t", redelivered=False)
    ledger.settle("r1", "t", None)
    assert ledger.admit("r1", "t", redelivered=False).verdict is Verdict.NEW


def test_window_and_row_bound(tmp_path):
    now = [1000.0]
    ledger = _ledger(tmp_path, window_s=60, max_rows=100, clock=lambda: now[0])
    for i in range(150):
        ledger.admit(f"r{i}", "t", redelivered=False)
    ledger.prune()
    assert ledger.state("r0", "t") is None and ledger.state("r149", "t") == "accepted"
    now[0] += 61
    assert ledger.admit("r149", "t", redelivered=False).verdict is Verdict.NEW  # outside the window: a new request
    assert ledger.prune() == 99 and ledger.state("r149", "t") == "accepted"


def test_claims_survive_a_restart_and_block_a_second_dispatch(tmp_path):
    first = _ledger(tmp_path)
    first.admit("r1", "t", redelivered=False)
    assert first.claim("r1", "t", [("dev/a/set", b"ON")]) is None
    first.close()
    second = _ledger(tmp_path)
    assert second.admit("r1", "t", redelivered=True).verdict is Verdict.RESUMED
    assert second.claim("r1", "t", [("dev/b/set", b"OFF")]) == [("dev/a/set", b"ON")]


def test_device_control_never_dispatches_a_request_twice_across_a_restart(tmp_path):
    """The crash came between the device command and the result: the run after it publishes nothing."""
    published: list[tuple[str, bytes]] = []

    def control(ledger: Ledger) -> DeviceControl:
        return DeviceControl(
            RegistryStore(SMALL),
            DeviceStates(),
            Confirmations(60),
            lambda t, p: published.append((t, p)),
            claim=ledger.claim,
        )

    first = _ledger(tmp_path)
    first.admit("cmd-1", "edged/x/result/cmd-1", redelivered=False)
    devices = control(first)
    out = devices.outcome(devices.store.get(), "cmd-1", PORCH_ON, dispatch=None, reply_topic="edged/x/result/cmd-1")
    assert out.result["actions"][0]["dispatched"] and published == [("test-devices/porch_light/set", b'{"state":"ON"}')]
    first.close()  # killed before the result went out

    second = _ledger(tmp_path)
    assert second.admit("cmd-1", "edged/x/result/cmd-1", redelivered=True).verdict is Verdict.RESUMED
    devices = control(second)
    again = devices.outcome(devices.store.get(), "cmd-1", PORCH_ON, dispatch=None, reply_topic="edged/x/result/cmd-1")
    assert len(published) == 1, "the device command went out twice"
    assert not again.result["actions"][0]["dispatched"]
    assert again.result["already_dispatched"] == [
        {"topic": "test-devices/porch_light/set", "payload": '{"state":"ON"}'}
    ]
    other = devices.outcome(devices.store.get(), "cmd-2", PORCH_ON, dispatch=None, reply_topic="edged/x/result/cmd-2")
    assert other.result["actions"][0]["dispatched"] and len(published) == 2  # another request dispatches as usual


def test_default_state_dir_follows_systemd_then_xdg():
    assert default_state_dir({"STATE_DIRECTORY": "/var/lib/edged:/var/lib/other"}) == Path("/var/lib/edged")
    assert default_state_dir({"XDG_STATE_HOME": "/h/.state"}) == Path("/h/.state/edged")


def test_copies_of_a_running_request_keep_only_receipts_and_are_capped(tmp_path):
    """A copy of a running request keeps what acknowledging it needs (packet id, QoS), never its payload;
    a QoS 0 copy keeps nothing; beyond MAX_COPIES a QoS 1 copy is acknowledged at once (SURPLUS)."""
    ledger = _ledger(tmp_path)
    assert ledger.admit("r1", "t/r1", redelivered=False).verdict is Verdict.NEW
    verdicts = [
        ledger.admit("r1", "t/r1", redelivered=False, origin=_copy(i, 0, 256 * 1024)).verdict for i in range(100)
    ]
    assert set(verdicts) == {Verdict.PENDING}
    verdicts = [
        ledger.admit("r1", "t/r1", redelivered=False, origin=_copy(i, 1, 256 * 1024)).verdict for i in range(100)
    ]
    assert verdicts == [Verdict.PENDING] * MAX_COPIES + [Verdict.SURPLUS] * (100 - MAX_COPIES)
    kept = ledger.confirmed("r1", "t/r1")
    assert [(m.mid, m.qos) for m in kept] == [(i, 1) for i in range(MAX_COPIES)]
    assert all(m.payload == b"" and m.user_properties == () and m.correlation_data is None for m in kept)


def test_a_claimed_request_is_never_forgotten_before_it_settles(tmp_path):
    """A request taken on with its device command claimed, whose run died: neither the window nor max_rows
    prunes it, so when it comes back (however late) it finds its claim and dispatches nothing again."""
    now = [0.0]
    ledger = _ledger(tmp_path, window_s=60, max_rows=100, clock=lambda: now[0])
    ledger.admit("r0", "t/r0", redelivered=False)
    assert ledger.claim("r0", "t/r0", [("dev/set", b"ON")]) is None
    for i in range(1, 300):  # far more than max_rows, and hours later
        now[0] += 60
        ledger.admit(f"r{i}", f"t/r{i}", redelivered=False)
        ledger.settle(f"r{i}", f"t/r{i}", b"{}")
    ledger.prune()
    ledger.close()
    again = _ledger(tmp_path, window_s=60, max_rows=100, clock=lambda: now[0])  # a new run
    assert again.admit("r0", "t/r0", redelivered=True).verdict is Verdict.RESUMED
    assert again.claim("r0", "t/r0", [("dev/set", b"ON")]) == [("dev/set", b"ON")]


def test_a_request_without_an_id_keeps_its_derived_id_across_a_crash(tmp_path):
    """Without an id, edged derives one from the packet: the broker's redelivery (DUP) after a crash finds the
    claim; the same words sent again later (not DUP) are a new request."""
    from edged.service.intake import packet_id

    msg = _copy(7, 1, 20)
    rid = packet_id(msg)
    assert rid == packet_id(_copy(9, 1, 20)) and rid != packet_id(_copy(7, 1, 21))
    ledger = _ledger(tmp_path)
    assert ledger.admit(rid, "t", redelivered=False).verdict is Verdict.NEW
    assert ledger.claim(rid, "t", [("dev/set", b"ON")]) is None
    ledger.close()
    after_crash = _ledger(tmp_path)
    assert after_crash.admit(rid, "t", redelivered=True).verdict is Verdict.RESUMED
    assert after_crash.claim(rid, "t", [("dev/set", b"ON")]) == [("dev/set", b"ON")]
    after_crash.settle(rid, "t", b"{}")
    after_crash.confirmed(rid, "t")
    assert after_crash.admit(rid, "t", redelivered=True).verdict is Verdict.ANSWERED
    assert after_crash.admit(rid, "t", redelivered=False).verdict is Verdict.NEW  # said again: do it again


def test_only_claims_wait_for_the_disk(tmp_path):
    """Request bookkeeping commits without an fsync (the network thread never waits on the disk); a dispatch
    claim is committed with one. Prints what 300 requests' bookkeeping costs."""
    import time

    ledger = _ledger(tmp_path)
    syncs: list[int] = []
    real = ledger._db

    class Watch:  # the real connection, noting the synchronous level of each commit
        def execute(self, sql: str, *args):
            if sql == "COMMIT" or sql.startswith(("INSERT", "UPDATE", "DELETE")):
                syncs.append(real.execute("PRAGMA synchronous").fetchone()[0])
            return real.execute(sql, *args)

        def __getattr__(self, name):
            return getattr(real, name)

    ledger._db = Watch()
    started = time.perf_counter()
    for i in range(300):
        ledger.admit(f"r{i}", "t", redelivered=False)
        ledger.settle(f"r{i}", "t", b"{}")
        ledger.confirmed(f"r{i}", "t")
    took = time.perf_counter() - started
    assert set(syncs) == {1}  # NORMAL
    syncs.clear()
    ledger.admit("c1", "t", redelivered=False)
    syncs.clear()
    ledger.claim("c1", "t", [("dev/set", b"ON")])
    assert syncs and set(syncs) == {2}  # FULL for the claim
    assert real.execute("PRAGMA synchronous").fetchone()[0] == 1
    print(f"\nledger: 300 requests (admit, settle, confirmed) in {took * 1000:.0f} ms")
