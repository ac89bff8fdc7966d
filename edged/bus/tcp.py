"""Socket options for MQTT connections.

MQTT packets are small and each waits for an answer (PUBACK, the result), the pattern Nagle's
algorithm is worst at: with delayed ACKs every hop can stall ~40 ms. Both edged's connection and
the caller's client send at once; the broker needs the same (Mosquitto: ``set_tcp_nodelay true``).
"""

from __future__ import annotations

import contextlib
import socket


def no_delay(_client: object, _userdata: object, sock: object) -> None:
    """paho ``on_socket_open`` callback: turn Nagle's algorithm off on the new connection."""
    if isinstance(sock, socket.socket):  # TLS sockets too; a websockets wrapper has nothing to turn off
        with contextlib.suppress(OSError):  # not a TCP socket (e.g. a unix socket)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
