"""Both ends of edged's MQTT traffic send small packets at once (no Nagle delay)."""

from __future__ import annotations

import socket


def _nodelay(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_daemon_and_client_connections_disable_nagle(start_daemon, client_for):
    d = start_daemon()
    c = client_for(d.base)
    assert _nodelay(d.bus._client.socket()) == 1
    assert _nodelay(c._client.socket()) == 1
    assert c.request("command", {"text": "lights on"})["status"] in ("ok", "rejected", "error")
