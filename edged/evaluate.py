"""``edged eval``: device-command accuracy over a JSONL set, through the daemon's own service path.

Each line: ``{"text": "...", "expect": [{"device": "...", "action": "...", "params": {...}}]}``,
optionally ``"area"`` (the speaker's room), ``"language"`` and ``"state"`` (device id -> its
reported state object, e.g. ``{"kitchen_ceiling": {"state": "ON", "brightness_percent": 40}}``).
An empty ``expect`` means the command must be refused (status rejected). Nothing is dispatched
(dry run). Accuracy is reported overall, per device type and per resolving layer (local, rules,
model), with the share of the set each layer answered.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from edged.devices.commands import DeviceControl
from edged.devices.registry import Registry
from edged.devices.state import DeviceStates
from edged.engine.types import AnswersAtOnce, Done, Engine, Generation, GenerationRequest
from edged.ops.progressbar import progress as progress_bar
from edged.protocol import Request, Result
from edged.service.handler import Job, Service
from edged.service.sessions import SessionStore
from edged.settings import ModelSettings, Settings

log = structlog.get_logger("edged.eval")
PATHS = ("local", "rules", "model")
Key = tuple[str, str, str]


@dataclass(frozen=True)
class Case:
    text: str
    expect: frozenset[Key]
    kind: str  # the expected device type, or "reject"
    area: str | None = None
    language: str | None = None
    state: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class CaseResult:
    case: Case
    got: frozenset[Key]
    valid: bool  # the answer parsed and matched the registry schema
    correct: bool
    ms: float
    prompt_tokens: int
    completion_tokens: int
    mask_ms: float
    resolved_by: str = "model"
    status: str = ""


def _key(device: str, action: str, params: dict[str, Any]) -> Key:
    norm = {
        k: round(float(v), 3) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
        for k, v in params.items()
    }
    return device, action, json.dumps(norm, sort_keys=True)


def load_cases(path: Path, registry: Registry, *, language: str | None = None) -> list[Case]:
    """The set's cases; ``language`` for those that do not name one."""
    types = {d.id: d.type for d in registry.devices}
    cases = []
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            expect = frozenset(_key(a["device"], a["action"], a.get("params", {})) for a in row["expect"])
            kind = types[row["expect"][0]["device"]] if row["expect"] else "reject"
            extra = {"language": language, **{k: row[k] for k in ("area", "language", "state") if k in row}}
            cases.append(Case(row["text"], expect, kind, **extra))
    return cases


def _actions(result: Result) -> frozenset[Key]:
    """The (device, action, params) a command result lists."""
    listed = (result.result or {}).get("actions")
    items = listed if isinstance(listed, list) else []
    return frozenset(_key(a["device"], a["action"], a["params"]) for a in items if isinstance(a, dict))


def _job(i: int, case: Case) -> Job:
    request = Request(id=f"eval-{i}", text=case.text, dispatch=False, language=case.language, area=case.area)
    return Job(
        kind="command",
        request=request,
        received_at=time.monotonic(),
        deadline=None,
        reply_topic="-",
        include_reasoning=False,
    )


def _set_states(control: DeviceControl | None, state: dict[str, dict[str, Any]]) -> None:
    if control is not None:
        control.states = DeviceStates()
        for device, value in state.items():
            control.states.update(device, json.dumps(value).encode())


def run_cases(
    service: Service, cases: list[Case], *, control: DeviceControl | None = None, progress: bool = True
) -> list[CaseResult]:
    outcomes = []
    for i, case in enumerate(progress_bar(cases, desc="eval", unit="case")):
        _set_states(control, case.state)
        result = service.handle(_job(i, case))
        got = _actions(result)
        valid = not (result.error and result.error.code.value in ("invalid_answer", "generation_failed"))
        correct = valid and (got == case.expect if case.expect else result.status == "rejected")
        outcomes.append(
            CaseResult(
                case,
                got,
                valid,
                correct,
                result.timing_ms.total,
                result.usage.prompt_tokens,
                result.usage.completion_tokens,
                result.timing_ms.mask,
                resolved_by=str((result.result or {}).get("resolved_by", "model")),
                status=result.status,
            )
        )
        if progress:
            log.info("eval_case", n=i + 1, of=len(cases), correct=correct, path=outcomes[-1].resolved_by)
    return outcomes


def _rate(values: Sequence[bool]) -> float | None:
    return sum(values) / len(values) if values else None


def summarise(outcomes: list[CaseResult]) -> dict[str, Any]:
    by_kind: dict[str, list[bool]] = defaultdict(list)
    by_path: dict[str, list[bool]] = defaultdict(list)
    for o in outcomes:
        by_kind[o.case.kind].append(o.correct)
        by_path[o.resolved_by].append(o.correct)
    ms = sorted(o.ms for o in outcomes)
    refusals = [o.status == "rejected" for o in outcomes if not o.case.expect]
    return {
        "cases": len(outcomes),
        "exact_match": sum(o.correct for o in outcomes) / len(outcomes),
        "schema_valid": sum(o.valid for o in outcomes) / len(outcomes),
        "refused": _rate(refusals),
        "p50_ms": statistics.median(ms),
        "p95_ms": ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))],
        "prompt_tokens": statistics.median(o.prompt_tokens for o in outcomes),
        "completion_tokens": statistics.mean(o.completion_tokens for o in outcomes),
        "mask_ms_per_token": sum(o.mask_ms for o in outcomes) / max(1, sum(o.completion_tokens for o in outcomes)),
        "by_type": {k: {"n": len(v), "exact_match": sum(v) / len(v)} for k, v in sorted(by_kind.items())},
        "by_path": {
            p: {"n": len(by_path[p]), "share": len(by_path[p]) / len(outcomes), "exact_match": _rate(by_path[p])}
            for p in PATHS
        },
        "misses": [
            {"text": o.case.text, "path": o.resolved_by, "got": sorted(o.got), "status": o.status}
            for o in outcomes
            if not o.correct
        ],
    }


def _pct(value: float | None) -> str:
    return f"{value:>16.1%}" if value is not None else f"{'-':>16}"


def print_table(rows: dict[str, dict[str, Any]]) -> None:
    """One column per run (e.g. pipeline / model only)."""
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
    print(f"{'refused (expect [])':24}" + "".join(_pct(rows[n]["refused"]) for n in names))
    for path in PATHS:
        cells = [rows[n]["by_path"][path] for n in names]
        print(f"  {path + ' share':22}" + "".join(_pct(c["share"]) for c in cells))
        print(f"  {path + ' exact':22}" + "".join(_pct(c["exact_match"]) for c in cells))
    kinds = sorted({k for r in rows.values() for k in r["by_type"]})
    for kind in kinds:
        typed = [rows[n]["by_type"].get(kind) for n in names]
        print(
            f"  {kind + ' (n=' + str(typed[0]['n'] if typed[0] else 0) + ')':22}"
            + "".join(_pct(c["exact_match"] if c else None) for c in typed)
        )


# run name -> DeviceControl options: the whole pipeline, or the model alone (plain or grounded)
RUNS: dict[str, dict[str, Any]] = {
    "pipeline": {"constrain": True, "local": True, "grounded": True},
    "unconstrained": {"constrain": False, "local": True, "grounded": True},
    "model only": {"constrain": True, "local": False, "grounded": False},
    "model grounded": {"constrain": True, "local": False, "grounded": True},
}


def _service(engine: Engine, model_settings: ModelSettings, control: DeviceControl) -> Service:
    sessions = SessionStore(max_turns=0, max_tokens=0, idle_s=1, max_sessions=1)
    return Service(engine, sessions, model_settings, devices=control)


def evaluate(
    engine: Engine,
    model_settings: ModelSettings,
    control_factory: Callable[..., DeviceControl],
    cases: list[Case],
    *,
    modes: list[str],
    outcomes: dict[str, list[CaseResult]] | None = None,
) -> dict[str, dict[str, Any]]:
    """One summary per run in ``modes`` (names from RUNS); ``outcomes`` collects the cases' records."""
    rows = {}
    for mode in modes:
        control = control_factory(**RUNS[mode])
        if RUNS[mode]["local"]:
            log.info("resolvers_warm", seconds=control.warm_up())
        started = time.perf_counter()
        done = run_cases(_service(engine, model_settings, control), cases, control=control)
        rows[mode] = summarise(done)
        if outcomes is not None:
            outcomes[mode] = done
        log.info(
            "eval_done",
            mode=mode,
            seconds=round(time.perf_counter() - started, 1),
            **{k: v for k, v in rows[mode].items() if k not in ("by_type", "by_path", "misses")},
        )
    return rows


def grounding_comparison(
    engine: Engine,
    model_settings: ModelSettings,
    control_factory: Callable[..., DeviceControl],
    pipeline: list[CaseResult],
) -> dict[str, dict[str, Any]]:
    """Model-path accuracy on the cases the pipeline left to the model: grounded (as run) vs plain."""
    left = [o for o in pipeline if o.resolved_by == "model"]
    if not left:
        return {}
    control = control_factory(**RUNS["model only"])
    plain = run_cases(_service(engine, model_settings, control), [o.case for o in left], control=control)
    return {"grounded": summarise(left), "plain": summarise(plain)}


class RefusingEngine(AnswersAtOnce):
    """``edged eval --model none``: measures the layers before the model; what reaches it is refused."""

    name = "none"
    supports_thinking = False

    def submit(self, request: GenerationRequest, on_done: Done) -> None:
        on_done(Generation('{"actions": [], "say": "no model"}', None, 0, 0, 0, 0.0, 0.0, "stop"))

    def count_tokens(self, text: str) -> int:
        return len(text.split())


def cli_eval(args: argparse.Namespace, settings: Settings) -> int:
    """``edged eval``: the pipeline on a set; ``--compare`` adds the model alone, ``--grounding`` grounded vs plain."""
    from edged.devices.confirmations import Confirmations
    from edged.devices.registry import RegistryStore

    store = RegistryStore(args.registry)
    cases = load_cases(args.cases, store.current, language=args.language)[: args.limit]
    engine, model = _eval_engine(args.model, settings)

    def control(*, constrain: bool, local: bool, grounded: bool) -> DeviceControl:
        commands = settings.commands.model_copy(update={"local": local, "grounded": grounded})
        return DeviceControl(
            store,
            DeviceStates(),
            Confirmations(60),
            lambda _t, _p: None,
            dispatch_default=False,
            constrain=constrain,
            commands=commands,
        )

    modes = ["pipeline", "model only"] if args.compare else ["pipeline"]
    if args.runs:
        modes = [m.strip() for m in args.runs.split(",") if m.strip()]
    outcomes: dict[str, list[CaseResult]] = {}
    rows = evaluate(engine, model, control, cases, modes=modes, outcomes=outcomes)
    print(f"{engine.name} on {args.registry.name}, {args.cases.name}: {len(cases)} cases, greedy")
    print_table(rows)
    grounding = {}
    if args.grounding and "pipeline" in outcomes:
        grounding = grounding_comparison(engine, model, control, outcomes["pipeline"])
    if grounding:
        print(f"\nmodel path only ({grounding['grounded']['cases']} cases the templates and rules left)")
        print_table(grounding)
    if args.misses:
        for mode, row in rows.items():
            for miss in row["misses"]:
                print(json.dumps({"run": mode, **miss}, ensure_ascii=False))
    if args.json:
        doc = {"model": engine.name, "registry": str(args.registry), "runs": rows, "grounding": grounding}
        args.json.write_text(json.dumps(doc, indent=2, ensure_ascii=False))
    return 0


def _eval_engine(which: str, settings: Settings) -> tuple[Engine, ModelSettings]:
    """The engine to evaluate (``none``: no model, the layers before it alone) and its greedy settings.

    Built by the daemon's own factory, so ``model.engine`` is honoured (``smollm2`` is handed over in
    the form that engine loads)."""
    from edged.engine.select import create_engine
    from edged.models.store import demo_model_path

    engine = settings.model.engine
    path = "none" if which == "none" else str(demo_model_path(engine)) if which == "smollm2" else which
    model = settings.model.model_copy(update={"path": path, "name": None, "seed": 0})
    model = model.model_copy(update={"no_think": model.no_think.model_copy(update={"temperature": 0.0})})
    return (RefusingEngine() if which == "none" else create_engine(model)), model
