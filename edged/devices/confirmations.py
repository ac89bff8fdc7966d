"""One-time confirmation tokens for device actions held back by their safety policy."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from edged.devices.actions import Resolved


@dataclass(frozen=True)
class Pending:
    request_id: str
    actions: tuple[Resolved, ...]
    expires_at: float


class TokenError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class Confirmations:
    """Tokens are random, expire after ``ttl_s`` and can be redeemed once."""

    def __init__(self, ttl_s: float, *, max_pending: int = 256, clock: Callable[[], float] = time.monotonic):
        self.ttl_s = ttl_s
        self._max = max_pending
        self._clock = clock
        self._pending: dict[str, Pending] = {}
        self._used: dict[str, float] = {}  # token -> expiry, to tell "reused" from "unknown"
        self._lock = threading.Lock()

    def hold(self, request_id: str, actions: Iterable[Resolved]) -> str:
        token = secrets.token_urlsafe(16)
        now = self._clock()
        with self._lock:
            self._forget_expired(now)
            while len(self._pending) >= self._max:
                self._pending.pop(next(iter(self._pending)))
            self._pending[token] = Pending(request_id, tuple(actions), now + self.ttl_s)
        return token

    def issued(self, token: str) -> bool:
        """True when this instance issued ``token`` (pending, used or expired but remembered)."""
        with self._lock:
            return token in self._pending or token in self._used

    def redeem(self, token: str) -> Pending:
        now = self._clock()
        with self._lock:
            pending = self._pending.pop(token, None)
            if pending is None:
                if token in self._used:
                    raise TokenError("token_used", "this confirmation token was already used")
                raise TokenError("token_unknown", "no pending confirmation has this token")
            self._used[token] = pending.expires_at
            if now > pending.expires_at:
                raise TokenError("token_expired", f"the confirmation expired {now - pending.expires_at:.0f} s ago")
            return pending

    def _forget_expired(self, now: float) -> None:
        for token in [t for t, p in self._pending.items() if now > p.expires_at + self.ttl_s]:
            del self._pending[token]
        for token in [t for t, exp in self._used.items() if now > exp + self.ttl_s]:
            del self._used[token]
