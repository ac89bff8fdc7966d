"""``edged eval``: device-command accuracy over a JSONL set, through the daemon's own service path.

Each line: ``{"text": "...", "expect": [{"device": "...", "action": "...", "params": {...}}]}``;
an empty ``expect`` means the command must be rejected. Nothing is dispatched (dry run).
"""

from __future__ import annotations

import json
import statistics
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from edged.devices.commands import DeviceControl
from edged.devices.registry import Registry
from edged.engine.types import Engine
from edged.protocol import Request, Result
from edged.service.handler import Job, Service
from edged.service.sessions import SessionStore
from edged.settings import ModelSettings

log = structlog.get_logger("edged.eval")


@dataclass(frozen=True)
class Case:
    text: str
    expect: frozenset[tuple[str, str, str]]
    kind: str  # the expected device type, or "reject"


@dataclass(frozen=True)
class Outcome:
    case: Case
    got: frozenset[tuple[str, str, str]]
    valid: bool  # the answer parsed and matched the registry schema
    correct: bool
    ms: float
    prompt_tokens: int
    completion_tokens: int
    mask_ms: float


def _key(device: str, action: str, params: Mapping[str, object]) -> tuple[str, str, str]:
    norm = {
        k: round(float(v), 3) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
        for k, v in params.items()
    }
    return device, action, json.dumps(norm, sort_keys=True)


def load_cases(path: Path, registry: Registry) -> list[Case]:
    types = {d.id: d.type for d in registry.devices}
    cases = []
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            expect = frozenset(_key(a["device"], a["action"], a.get("params", {})) for a in row["expect"])
            kind = types[row["expect"][0]["device"]] if row["expect"] else "reject"
            cases.append(Case(row["text"], expect, kind))
    return cases


def _actions(result: Result) -> frozenset[tuple[str, str, str]]:
    """The (device, action, params) a command result lists."""
    listed = (result.result or {}).get("actions")
    items = listed if isinstance(listed, list) else []
    return frozenset(_key(a["device"], a["action"], a["params"]) for a in items if isinstance(a, dict))


def run_cases(service: Service, cases: list[Case], *, progress: bool = True) -> list[Outcome]:
    outcomes = []
    for i, case in enumerate(cases):
        request = Request(id=f"eval-{i}", text=case.text, dispatch=False)
        job = Job(
            kind="command",
            request=request,
            received_at=time.monotonic(),
            deadline=None,
            reply_topic="-",
            include_reasoning=False,
        )
        result = service.handle(job)
        got = _actions(result)
        valid = not (result.error and result.error.code.value in ("invalid_answer", "generation_failed"))
        correct = valid and (got == case.expect if case.expect else result.status == "rejected")
        outcomes.append(
            Outcome(
                case,
                got,
                valid,
                correct,
                result.timing_ms.total,
                result.usage.prompt_tokens,
                result.usage.completion_tokens,
                result.timing_ms.mask,
            )
        )
        if progress:
            log.info("eval_case", n=i + 1, of=len(cases), correct=correct, valid=valid, ms=result.timing_ms.total)
    return outcomes


def summarise(outcomes: list[Outcome]) -> dict[str, Any]:
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for o in outcomes:
        by_kind[o.case.kind].append(o.correct)
    ms = sorted(o.ms for o in outcomes)
    return {
        "cases": len(outcomes),
        "exact_match": sum(o.correct for o in outcomes) / len(outcomes),
        "schema_valid": sum(o.valid for o in outcomes) / len(outcomes),
        "p50_ms": statistics.median(ms),
        "p95_ms": ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))],
        "prompt_tokens": statistics.median(o.prompt_tokens for o in outcomes),
        "completion_tokens": statistics.mean(o.completion_tokens for o in outcomes),
        "mask_ms_per_token": sum(o.mask_ms for o in outcomes) / max(1, sum(o.completion_tokens for o in outcomes)),
        "by_type": {k: {"n": len(v), "exact_match": sum(v) / len(v)} for k, v in sorted(by_kind.items())},
    }


def print_table(rows: dict[str, dict[str, Any]]) -> None:
    """One column per run (e.g. constrained / unconstrained)."""
    names = list(rows)
    print(f"{'':24}" + "".join(f"{n:>16}" for n in names))
    for label, key, fmt in (
        ("cases", "cases", "{:>16d}"),
        ("exact match", "exact_match", "{:>16.1%}"),
        ("schema-valid", "schema_valid", "{:>16.1%}"),
        ("latency p50 ms", "p50_ms", "{:>16.0f}"),
        ("latency p95 ms", "p95_ms", "{:>16.0f}"),
        ("prompt tokens (median)", "prompt_tokens", "{:>16.0f}"),
        ("new tokens (mean)", "completion_tokens", "{:>16.1f}"),
        ("mask ms per token", "mask_ms_per_token", "{:>16.3f}"),
    ):
        print(f"{label:24}" + "".join(fmt.format(rows[n][key]) for n in names))
    kinds = sorted({k for r in rows.values() for k in r["by_type"]})
    for kind in kinds:
        cells = [rows[n]["by_type"].get(kind) for n in names]
        print(
            f"  {kind + ' (n=' + str(cells[0]['n'] if cells[0] else 0) + ')':22}"
            + "".join(f"{c['exact_match']:>16.1%}" if c else f"{'-':>16}" for c in cells)
        )


class ControlFactory(Protocol):
    def __call__(self, *, constrain: bool) -> DeviceControl: ...


def evaluate(
    engine: Engine,
    model_settings: ModelSettings,
    control_factory: ControlFactory,
    cases: list[Case],
    *,
    modes: list[str],
) -> dict[str, dict[str, Any]]:
    rows = {}
    for mode in modes:
        control = control_factory(constrain=mode == "constrained")
        service = Service(
            engine, SessionStore(max_turns=0, max_tokens=0, idle_s=1, max_sessions=1), model_settings, devices=control
        )
        started = time.perf_counter()
        rows[mode] = summarise(run_cases(service, cases))
        log.info(
            "eval_done",
            mode=mode,
            seconds=round(time.perf_counter() - started, 1),
            **{k: v for k, v in rows[mode].items() if k != "by_type"},
        )
    return rows
