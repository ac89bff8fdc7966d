"""Per-client rate limits: a token bucket per client id, a bounded number of clients (LRU).

Client ids are what callers say they are (the ``client`` field or MQTT 5 user property): this
shares the model fairly among cooperating callers; it is no defence against a caller that lies
(that is the broker's job: ACLs, per-client quotas). Requests without a client id share one
bucket, so leaving the id out never escapes the limit.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

ANONYMOUS = ""  # the bucket of requests that name no client


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """``allow(client)`` takes one token from that client's bucket; buckets refill at ``per_minute``."""

    def __init__(self, *, per_minute: float, burst: int, max_clients: int, clock: Callable[[], float] = time.monotonic):
        self.per_minute = per_minute
        self.burst = burst
        self.max_clients = max_clients
        self._rate = per_minute / 60.0  # tokens per second
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, client: str | None) -> bool:
        key = client or ANONYMOUS
        now = self._clock()
        with self._lock:
            bucket = self._buckets.pop(key, None)
            if bucket is None:
                bucket = _Bucket(tokens=float(self.burst), at=now)
            else:
                bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self._rate)
                bucket.at = now
            self._buckets[key] = bucket  # most recently seen last
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
            if bucket.tokens < 1.0:
                return False
            bucket.tokens -= 1.0
            return True

    def retry_after_s(self, client: str | None) -> float:
        """Seconds until ``client`` has a token again (0 when it has one now)."""
        with self._lock:
            bucket = self._buckets.get(client or ANONYMOUS)
            if bucket is None:
                return 0.0
            missing = 1.0 - (bucket.tokens + (self._clock() - bucket.at) * self._rate)
        return max(0.0, missing / self._rate)

    def tracked(self) -> int:
        with self._lock:
            return len(self._buckets)
