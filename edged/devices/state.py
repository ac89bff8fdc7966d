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


def state_json(payload: bytes) -> str | None:
    """The selected fields of a JSON object payload as compact JSON (for resolvers), else None."""
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    return json.dumps({k: data[k] for k in STATE_KEYS if k in data}, separators=(",", ":"))[:200]


class DeviceStates:
    def __init__(self) -> None:
        self._by_device: dict[str, str] = {}
        self._json: dict[str, str] = {}
        self._lock = threading.Lock()

    def update(self, device_id: str, payload: bytes) -> None:
        state, as_json = summarise(payload), state_json(payload)
        with self._lock:
            if state is None:
                self._by_device.pop(device_id, None)
            else:
                self._by_device[device_id] = state
            if as_json is None:
                self._json.pop(device_id, None)
            else:
                self._json[device_id] = as_json

    def json_snapshot(self) -> dict[str, str]:
        """Device id -> latest state as JSON text (``{"state":"ON","brightness_percent":40}``)."""
        with self._lock:
            return dict(self._json)

    def snapshot(self) -> dict[str, str]:
        with self._lock:
            return dict(self._by_device)
