"""``edged simulate``: a pump line publishing realistic readings, with an injectable fault.

Topics: ``{prefix}/{pump}/{signal}`` with JSON ``{"value": x, "unit": "..."}`` for pumps
pump_1..pump_N; signals vibration (mm/s RMS), bearing_temp (°C), pressure (bar), flow (m³/h),
motor_current (A). Faults: ``bearing`` (vibration and temperature climb), ``cavitation``
(flow drops, vibration noisy, pressure falls), ``blockage`` (pressure up, flow and current down).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

NORMAL = {  # mean, noise sd, unit
    "vibration": (2.2, 0.25, "mm/s"),
    "bearing_temp": (48.0, 0.8, "°C"),
    "pressure": (4.0, 0.08, "bar"),
    "flow": (15.0, 0.4, "m3/h"),
    "motor_current": (11.0, 0.3, "A"),
}
FAULTS: dict[str, dict[str, float]] = {  # signal -> shift at full severity
    "bearing": {"vibration": 6.0, "bearing_temp": 25.0, "motor_current": 1.5},
    "cavitation": {"flow": -5.0, "pressure": -1.2, "vibration": 3.0},
    "blockage": {"pressure": 2.5, "flow": -7.0, "motor_current": -2.0},
}


@dataclass(frozen=True)
class Reading:
    topic: str
    payload: bytes


def readings(
    prefix: str, pumps: int, *, fault: str | None = None, fault_pump: int = 3, steps: int = 60, seed: int = 0
) -> Iterator[Reading]:
    """``steps`` rounds of readings; a fault grows linearly over the rounds on ``fault_pump``."""
    rng = random.Random(seed)
    for step in range(steps):
        severity = (step + 1) / steps
        for p in range(1, pumps + 1):
            for signal, (mean, sd, unit) in NORMAL.items():
                shift = FAULTS[fault].get(signal, 0.0) * severity if fault and p == fault_pump else 0.0
                noise = sd * (3 if fault == "cavitation" and p == fault_pump and signal == "vibration" else 1)
                value = round(mean + shift + rng.gauss(0, noise), 3)
                yield Reading(f"{prefix}/pump_{p}/{signal}", json.dumps({"value": value, "unit": unit}).encode())


def run(
    publish: Callable[[str, bytes], None],
    prefix: str,
    pumps: int,
    *,
    fault: str | None,
    fault_pump: int,
    steps: int,
    interval_s: float,
    wait: Callable[[float], None],
) -> int:
    """Publish every reading; ``wait`` paces the rounds (pass a no-op to publish a burst)."""
    count = 0
    per_round = pumps * len(NORMAL)
    for i, reading in enumerate(readings(prefix, pumps, fault=fault, fault_pump=fault_pump, steps=steps)):
        publish(reading.topic, reading.payload)
        count += 1
        if (i + 1) % per_round == 0:
            wait(interval_s)
    return count
