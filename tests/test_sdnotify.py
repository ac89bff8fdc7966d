"""sd_notify on a real socket: the messages, the abstract namespace, the watchdog interval."""

from __future__ import annotations

import os
import socket
import uuid

from edged.ops.sdnotify import Notifier, watchdog_interval


def test_messages_arrive_as_one_datagram_each(notify_socket):
    """READY/STATUS/WATCHDOG/STOPPING go to $NOTIFY_SOCKET as KEY=value lines, one datagram per call."""
    n = Notifier.from_env({"NOTIFY_SOCKET": notify_socket.path})
    assert n.enabled
    assert n.status("loading model\nx") and n.ready("online") and n.watchdog() and n.reloading() and n.stopping("bye")
    notify_socket.wait_for("STOPPING")
    got = [fields for _, fields in notify_socket.messages]
    assert got[0] == {"STATUS": "loading model x"}  # a newline would start a new field: flattened
    assert got[1] == {"READY": "1", "STATUS": "online"}
    assert got[2] == {"WATCHDOG": "1"}
    assert got[3]["RELOADING"] == "1" and int(got[3]["MONOTONIC_USEC"]) > 0
    assert got[4] == {"STOPPING": "1", "STATUS": "bye"}


def test_abstract_namespace_socket():
    """An address starting with '@' is a Linux abstract socket."""
    name = f"edged-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert Notifier(f"@{name}").ready("up")
        assert sock.recv(100) == b"READY=1\nSTATUS=up"


def test_without_systemd_nothing_is_sent_and_failures_do_not_raise(tmp_path):
    """No $NOTIFY_SOCKET: a no-op. A socket that went away: False and one warning, never an exception."""
    assert not Notifier.from_env({}).enabled and not Notifier.from_env({}).ready("x")
    gone = Notifier(str(tmp_path / "no-such-socket"))
    assert gone.watchdog() is False and gone.watchdog() is False


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process():
    """WATCHDOG_USEC=10 s -> ping every 5 s; absent, zero, or meant for another pid -> no watchdog."""
    assert watchdog_interval({"WATCHDOG_USEC": "10000000"}) == 5.0
    assert watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}) == 5.0
    assert watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}, pid=2) is None
    assert watchdog_interval({}) is None and watchdog_interval({"WATCHDOG_USEC": "0"}) is None
