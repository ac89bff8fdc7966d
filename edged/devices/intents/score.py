"""Score the local resolver alone on an eval set (``python -m edged.bench.local_intents SET.jsonl REGISTRY.toml``).

A case is exact when the proposal, with area calls expanded to devices, equals the expected
actions; a case the resolver passes on (None) counts as ``passed_on``, not as wrong, because the
next resolver handles it. For an ``expect: []`` case, passing on is right.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from edged.devices.intents.matcher import IntentResolver
from edged.devices.proposal import CommandContext, Proposal
from edged.devices.registry import Registry

ActionKey = tuple[str, str, str]


@dataclass(frozen=True)
class Scored:
    text: str
    verdict: str  # exact | wrong | passed_on | rejected_ok
    got: frozenset[ActionKey]
    expect: frozenset[ActionKey]
    ms: float


def _key(device: str, action: str, params: dict[str, object]) -> ActionKey:
    norm = {k: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for k, v in params.items()}
    return device, action, json.dumps(norm, sort_keys=True)


def expand(registry: Registry, proposal: Proposal) -> frozenset[ActionKey]:
    """The device actions a proposal means (area+type calls expanded like the shared validation does)."""
    keys: set[ActionKey] = set()
    for call in proposal.calls:
        devices = (
            [call.device]
            if call.device
            else [d.id for d in registry.targets(call.area or "", call.type or "", call.action)]
        )
        keys.update(_key(d, call.action, dict(call.params)) for d in devices)
    return frozenset(keys)


def score_case(resolver: IntentResolver, registry: Registry, row: dict[str, object], language: str) -> Scored:
    expect = frozenset(_key(a["device"], a["action"], a.get("params", {})) for a in row["expect"])  # type: ignore[attr-defined]
    command = CommandContext(text=str(row["text"]), language=language, area=row.get("area"))  # type: ignore[arg-type]
    start = time.perf_counter()
    proposal = resolver.resolve(registry, command)
    ms = (time.perf_counter() - start) * 1000
    got = expand(registry, proposal) if proposal else frozenset()
    if proposal is None:
        verdict = "rejected_ok" if not expect else "passed_on"
    else:
        verdict = "exact" if got == expect else "wrong"
    return Scored(str(row["text"]), verdict, got, expect, ms)


def score_file(resolver: IntentResolver, registry: Registry, path: Path, language: str) -> list[Scored]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [score_case(resolver, registry, row, language) for row in rows]
