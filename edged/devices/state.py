"""The latest state each device reported on its state topic, for prompts ("currently off")."""

from __future__ import annotations

import json
import threading

MAX_STATE_CHARS = 60
STATE_KEYS = (
    "state",
    "brightness_percent",
    "position",
    "speed",
    "run",
    "current_heating_setpoint",
    "volume",
    "opening",
)


def summarise(payload: bytes) -> str | None:
    """A short text for a state payload: selected fields of a JSON object, or the text itself."""
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        return text[:MAX_STATE_CHARS] or None
    if isinstance(data, dict):
        parts = [f"{k}={data[k]}" for k in STATE_KEYS if k in data]
        return ", ".join(parts)[:MAX_STATE_CHARS] or None
    return str(data)[:MAX_STATE_CHARS]


class DeviceStates:
    def __init__(self) -> None:
        self._by_device: dict[str, str] = {}
        self._lock = threading.Lock()

    def update(self, device_id: str, payload: bytes) -> None:
        state = summarise(payload)
        with self._lock:
            if state is None:
                self._by_device.pop(device_id, None)
            else:
                self._by_device[device_id] = state

    def snapshot(self) -> dict[str, str]:
        with self._lock:
            return dict(self._by_device)
