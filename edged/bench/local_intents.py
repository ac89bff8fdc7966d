"""The local (sentence template) resolver alone over an eval set: exact, wrong, passed on, latency.

``python -m edged.bench.local_intents edged/bench/eval/home.jsonl config/registry-home.toml --show``
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from edged.devices.intents.matcher import IntentResolver
from edged.devices.intents.score import Scored, score_file
from edged.devices.registry import load_registry


def report(name: str, scored: list[Scored], warm_up_ms: float, *, show: bool) -> None:
    counts = Counter(s.verdict for s in scored)
    commands = sum(1 for s in scored if s.expect)
    exact = counts["exact"]
    print(f"{name}: {len(scored)} cases, warm-up {warm_up_ms:.0f} ms")
    print(f"  exact {exact}/{commands} commands ({100 * exact / max(commands, 1):.0f}%), wrong {counts['wrong']},")
    print(f"  passed on {counts['passed_on']}, rejects passed on {counts['rejected_ok']}/{len(scored) - commands}")
    times = sorted(s.ms for s in scored)
    print(f"  latency ms: median {times[len(times) // 2]:.1f}, max {times[-1]:.1f}")
    for s in scored:
        if show and s.verdict in ("wrong", "passed_on"):
            print(f"  {s.verdict:9} {s.text!r}" + (f" got {sorted(s.got)}" if s.verdict == "wrong" else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("eval_set", type=Path)
    parser.add_argument("registry", type=Path)
    parser.add_argument("--language", default="en")
    parser.add_argument("--sentences", type=Path, default=Path("config/sentences"))
    parser.add_argument("--show", action="store_true", help="list every case that is not exact")
    args = parser.parse_args()
    registry = load_registry(args.registry)
    resolver = IntentResolver(args.sentences)
    cold = resolver.warm_up(registry, [args.language])
    scored = score_file(resolver, registry, args.eval_set, args.language)
    report(args.eval_set.name, scored, cold[args.language], show=args.show)


if __name__ == "__main__":
    main()
