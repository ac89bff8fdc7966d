"""Rules-only accuracy on an eval set: exact matches of the rules resolver's actions (area calls expanded).

Usage: python scripts/rules_accuracy.py edged/bench/eval/home.jsonl config/registry-home.toml [--split] [-v]
       [--language de]
Rows may carry the request's ``area`` and device ``state`` (id -> state JSON text).
``--split`` resolves the parts of "X and Y" requests one by one (what the command pipeline does).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import structlog

from edged.devices.actions import output_model, parse_answer
from edged.devices.proposal import CommandContext
from edged.devices.registry import load_registry
from edged.devices.rules import RulesResolver


def _num(params: dict) -> str:
    return json.dumps(
        {k: int(v) if isinstance(v, float) and v == int(v) else v for k, v in params.items()}, sort_keys=True
    )


def _got(reg, model, resolver, row: dict, split: bool, language: str) -> frozenset | None:
    text = row["text"]
    parts = re.split(r"\s*(?:,\s*)?\band\b\s*|:\s*", text) if split else [text]
    keys = set()
    for part in [p for p in parts if p.strip()] or [text]:
        proposal = resolver.resolve(
            reg, CommandContext(part, language=language, area=row.get("area"), states=row.get("state", {}))
        )
        if proposal is None:
            if split and len(parts) > 1:
                continue
            return None
        resolved, _ = parse_answer(reg, model, proposal.answer_json())
        keys |= {(r.device, r.action, _num(r.params)) for r in resolved}
    return frozenset(keys) or None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("eval")
    ap.add_argument("registry")
    ap.add_argument("--split", action="store_true")
    ap.add_argument("--language", default="en")
    ap.add_argument("-v", action="store_true")
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    reg = load_registry(Path(args.registry))
    model, resolver = output_model(reg), RulesResolver()
    rows = [json.loads(line) for line in Path(args.eval).read_text().splitlines() if line.strip()]
    exact = answered = wrong = 0
    for row in rows:
        want = frozenset((e["device"], e["action"], _num(e["params"])) for e in row["expect"])
        got = _got(reg, model, resolver, row, args.split, args.language)
        answered += got is not None
        ok = got == want if want else got is None
        exact += ok
        wrong += got is not None and not ok
        if args.v and not ok:
            print(f"MISS {row['text']!r}: got {sorted(got) if got else None}")  # noqa: T201
    share = f"{100 * exact / len(rows):.0f}%"
    print(f"{args.eval}: exact {exact}/{len(rows)} ({share}), answered {answered}, wrong {wrong}")  # noqa: T201


if __name__ == "__main__":
    main()
