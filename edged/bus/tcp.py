"""Socket options for MQTT connections.

MQTT packets are small and each waits for an answer (PUBACK, the result), the pattern Nagle's
algorithm is worst at: with delayed ACKs every hop can stall ~40 ms. Both edged's connection and
the caller's client send at once; the broker needs the same (Mosquitto: ``set_tcp_nodelay true``).
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any


def no_delay(_client: Any, _userdata: Any, sock: Any) -> None:
    """paho ``on_socket_open`` callback: turn Nagle's algorithm off on the new connection."""
    # Not a TCP socket (e.g. a unix socket or websockets wrapper): nothing to turn off.
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
