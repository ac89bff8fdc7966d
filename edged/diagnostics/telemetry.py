"""Sensor readings collected from the bus: bounded windows per series, junk counted, never fatal."""

from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field, field_validator

log = structlog.get_logger("edged.telemetry")
JUNK_LOG_INTERVAL_S = 60.0


class SensorSpec(BaseModel):
    """One sensor declaration; a topic with ``+``/``#`` wildcards declares a family of series."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_]{0,47}$")
    topic: str
    path: str | None = Field(None, description="dotted JSON field path; none = the payload is a bare number")
    unit: str | None = None
    normal_min: float | None = None
    normal_max: float | None = None
    device: str | None = Field(None, description="registry device id this sensor belongs to")
    stale_s: float = Field(300, gt=0, description="no reading for this long = a data gap")

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        parts = v.split("/")
        if not v or "#" in parts[:-1] or any(("+" in p or "#" in p) and len(p) > 1 for p in parts):
            raise ValueError("topic must be a valid MQTT topic filter")
        return v


class TelemetrySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sensors: list[SensorSpec] = []
    window_s: float = Field(3600, gt=0, description="readings older than this are dropped")
    max_samples: int = Field(720, ge=2, description="per series")
    max_series: int = Field(500, ge=1, description="all series together; the least recently updated is dropped")


@dataclass(frozen=True)
class Series:
    key: str  # e.g. "vibration/pump_3": the spec id plus what the wildcards matched
    spec: SensorSpec
    topic: str
    samples: tuple[tuple[float, float], ...]  # (unix time, value), oldest first


def _matches(filter_: str, topic: str) -> list[str] | None:
    """The parts ``+``/``#`` matched, or None if the topic does not match the filter."""
    fparts, tparts = filter_.split("/"), topic.split("/")
    matched: list[str] = []
    for i, f in enumerate(fparts):
        if f == "#":
            return matched + ["/".join(tparts[i:])]
        if i >= len(tparts) or (f != "+" and f != tparts[i]):
            return None
        if f == "+":
            matched.append(tparts[i])
    return matched if len(fparts) == len(tparts) else None


def read_value(payload: bytes, path: str | None) -> float:
    """The number in a payload (bare, or at a dotted JSON path); ValueError for anything else."""
    text = payload.decode("utf-8")
    data: Any = json.loads(text) if path else float(text.strip())
    for part in (path or "").split(".") if path else ():
        data = data[int(part)] if isinstance(data, list) else data[part]
    value = float(data)
    if isinstance(data, bool) or not math.isfinite(value):
        raise ValueError(f"not a finite number: {data!r}")
    return value


class TelemetryStore:
    def __init__(self, settings: TelemetrySettings, *, clock: Callable[[], float] = time.time):
        self.settings = settings
        self._clock = clock
        self._series: OrderedDict[str, tuple[SensorSpec, str, deque[tuple[float, float]]]] = OrderedDict()
        self._lock = threading.Lock()
        self.junk = 0
        self.accepted = 0
        self._junk_logged_at = -math.inf

    def topics(self) -> list[str]:
        return sorted({s.topic for s in self.settings.sensors})

    def covers(self, topic: str) -> bool:
        """True when ``topic`` is one of the sensor topics (their filters match it)."""
        return any(_matches(t, topic) is not None for t in self.topics())

    def ingest(self, topic: str, payload: bytes) -> bool:
        """Record a reading; False (counted, logged at a bounded rate) when the topic or payload is junk."""
        for spec in self.settings.sensors:
            matched = _matches(spec.topic, topic)
            if matched is None:
                continue
            try:
                value = read_value(payload, spec.path)
            except (ValueError, KeyError, IndexError, TypeError, UnicodeDecodeError, RecursionError) as exc:
                self._junk(topic, exc)
                return False
            self._add("/".join([*matched, spec.id]) if matched else spec.id, spec, topic, value)
            return True
        return False

    def _add(self, key: str, spec: SensorSpec, topic: str, value: float) -> None:
        now = self._clock()
        with self._lock:
            entry = self._series.pop(key, None) or (spec, topic, deque(maxlen=self.settings.max_samples))
            entry[2].append((now, value))
            self._series[key] = entry
            while len(self._series) > self.settings.max_series:
                self._series.popitem(last=False)
            self.accepted += 1

    def _junk(self, topic: str, exc: Exception) -> None:
        self.junk += 1
        now = self._clock()
        if now - self._junk_logged_at >= JUNK_LOG_INTERVAL_S:
            self._junk_logged_at = now
            log.warning("telemetry_junk", topic=topic, error=f"{type(exc).__name__}: {exc}", junk_total=self.junk)

    def series(self) -> list[Series]:
        cutoff = self._clock() - self.settings.window_s
        with self._lock:
            out = []
            for key, (spec, topic, samples) in self._series.items():
                while samples and samples[0][0] < cutoff:
                    samples.popleft()
                out.append(Series(key, spec, topic, tuple(samples)))
            return sorted(out, key=lambda s: s.key)
