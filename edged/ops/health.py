"""edged's state on the bus (retained ``{base}/status``) and the health check that feeds systemd's watchdog.

States: ``starting`` (connected, model loading), ``online``, ``degraded`` (the worker has made no
progress for ``health.stuck_after_s``), ``stopping`` (finishing the request in progress),
``offline`` (stopped; also the broker's last will).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from typing import Literal

import structlog

from edged.ops.sdnotify import Notifier

log = structlog.get_logger("edged.health")

State = Literal["starting", "online", "degraded", "stopping", "offline"]
SERVING: frozenset[State] = frozenset({"online", "degraded"})


class StatusBoard:
    """Holds the state, publishes it (retained) on every change and reconnect, mirrors it as ``STATUS=``."""

    def __init__(
        self,
        *,
        publish: Callable[[bytes], threading.Event],
        notifier: Notifier,
        info: Callable[[], Mapping[str, object]],
        clock: Callable[[], float] = time.monotonic,
    ):
        self._publish = publish
        self._notifier = notifier
        self._info = info
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self.state: State = "starting"
        self.reason: str | None = None

    def document(self, state: State | None = None) -> bytes:
        """The status JSON for the current state (or for ``state``, e.g. the last will's ``offline``)."""
        body: dict[str, object] = {"state": state or self.state, **self._info()}
        body["uptime_s"] = round(self._clock() - self._started, 1)
        if state is None and self.reason:
            body["reason"] = self.reason
        return json.dumps(body).encode()

    def set(
        self, state: State, *, reason: str | None = None, only_from: frozenset[State] | None = None
    ) -> threading.Event | None:
        """Change the state and publish it; None (nothing published) when the state is not in ``only_from``."""
        with self._lock:  # publish under the lock: the broker retains the last state set
            if only_from is not None and self.state not in only_from:
                return None
            self.state, self.reason = state, reason
            done = self._publish(self.document())
        self._notifier.status(f"{state}: {reason}" if reason else state)
        log.info("state_changed", state=state, reason=reason)
        return done

    def republish(self) -> None:
        with self._lock:
            self._publish(self.document())


class Monitor:
    """One health check per tick: WATCHDOG=1 only while ``healthy()``; ``on_change`` when that flips.

    The watchdog is fed from this check, not from a timer that always succeeds: a stuck worker
    stops the pings and systemd restarts edged after ``WatchdogSec``.
    """

    def __init__(self, *, healthy: Callable[[], bool], notifier: Notifier, on_change: Callable[[bool], None]):
        self._healthy = healthy
        self._notifier = notifier
        self._on_change = on_change
        self.healthy = True

    def check(self) -> bool:
        healthy = self._healthy()
        if healthy:
            self._notifier.watchdog()
        if healthy != self.healthy:
            self.healthy = healthy
            self._on_change(healthy)
        return healthy
