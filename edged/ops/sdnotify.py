"""systemd's notification protocol (sd_notify): READY=1, STATUS=, WATCHDOG=1, RELOADING=1, STOPPING=1.

One datagram per call to the ``AF_UNIX`` socket named by ``$NOTIFY_SOCKET`` (a path, or
``@name`` for the abstract namespace). Without ``$NOTIFY_SOCKET`` (not under systemd, or a
unit that is not ``Type=notify``) every call does nothing. The environment is read when a
:class:`Notifier` is made, never at import.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger("edged.sdnotify")


class Notifier:
    """Sends sd_notify messages; never raises (a lost notification must not stop the daemon)."""

    def __init__(self, address: str | None):
        self.address = address
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._warned = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        environ = os.environ if environ is None else environ
        return cls(environ.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send ``fields`` (``KEY=value`` lines) as one datagram; True when it was sent."""
        if self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        data = "\n".join(f.replace("\n", " ") for f in fields).encode()
        try:
            with self._lock:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(data, target)
            return True
        except OSError as exc:
            if not self._warned:  # once: a watchdog ping every few seconds would flood the log
                self._warned = True
                log.warning("sd_notify_failed", socket=self.address, error=str(exc))
            return False

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def reloading(self) -> bool:
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self, status: str) -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def watchdog_interval(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of ``$WATCHDOG_USEC``; None when no watchdog is asked for.

    ``$WATCHDOG_PID``, when set, must be this process (a child must not ping for its parent).
    """
    environ = os.environ if environ is None else environ
    usec, for_pid = environ.get("WATCHDOG_USEC"), environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    if for_pid and for_pid != str(os.getpid() if pid is None else pid):
        return None
    return int(usec) / 2 / 1_000_000
