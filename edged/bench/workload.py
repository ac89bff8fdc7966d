"""The seeded workload: command texts for a registry, the long query, and the prompts edged renders for them."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEFAULT_REGISTRY = REPO / "config" / "registry-home.toml"
DEFAULT_CASES = Path(__file__).resolve().parent / "eval" / "home.jsonl"

# A diagnostic question with readings: long enough to keep the model busy while commands arrive.
THINKING_QUERY: dict[str, Any] = {
    "text": "why is pump 3 vibrating? Go through every possible cause before you answer.",
    "context": {
        "pump3": {
            "vibration_mm_s": 7.9,
            "vibration_normal_mm_s": 2.5,
            "bearing_temp_c": 71,
            "flow_m3_h": 11.2,
            "flow_normal_m3_h": 15,
            "motor_current_a": 18.4,
            "hours_since_service": 9100,
        }
    },
}


@dataclass(frozen=True)
class Workload:
    commands: list[str]  # in the order they are sent; the same list serves every phase
    seed: int

    def take(self, n: int, start: int = 0) -> list[str]:
        """``n`` commands from position ``start``, wrapping around."""
        return [self.commands[(start + i) % len(self.commands)] for i in range(n)]


def case_texts(cases: Path) -> list[str]:
    return [json.loads(line)["text"] for line in cases.read_text().splitlines() if line.strip()]


def load_workload(cases: Path, *, seed: int, n: int, keep: set[str] | None = None) -> Workload:
    """``n`` command texts drawn from a JSONL set (``{"text": ...}`` per line) in a seeded order;
    ``keep``: only these texts (e.g. the ones the templates and rules leave to the model)."""
    texts = [t for t in case_texts(cases) if keep is None or t in keep]
    if not texts:
        raise ValueError(f"{cases}: no commands")
    rng = random.Random(seed)
    order = rng.sample(texts, k=min(n, len(texts)))
    while len(order) < n:  # more requests than texts: repeat in a new shuffled order
        order += rng.sample(texts, k=min(n - len(order), len(texts)))
    return Workload(order, seed)


def command_messages(registry: Path, texts: list[str]) -> list[list[dict[str, str]]]:
    """The chat messages edged builds for each command (its own prompt code; no device states)."""
    from edged.devices.commands import DeviceControl
    from edged.devices.confirmations import Confirmations
    from edged.devices.registry import RegistryStore
    from edged.devices.state import DeviceStates

    control = DeviceControl(
        RegistryStore(registry), DeviceStates(), Confirmations(60), lambda _t, _p: None, dispatch_default=False
    )
    return [control.prepare(text, context=None, history=())[1] for text in texts]


def resolved_without_model(registry: Path, texts: list[str]) -> set[str]:
    """The texts edged answers without generation (resolved by templates or rules, or refused as naming
    nothing in the registry): the daemon's pipeline, run in this process."""
    from edged.devices.commands import DeviceControl
    from edged.devices.confirmations import Confirmations
    from edged.devices.registry import RegistryStore
    from edged.devices.state import DeviceStates

    control = DeviceControl(
        RegistryStore(registry), DeviceStates(), Confirmations(60), lambda _t, _p: None, dispatch_default=False
    )
    control.warm_up()
    return {t for t in texts if control.try_resolve("bench", t, dispatch=False) is not None}
