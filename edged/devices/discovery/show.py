"""``edged registry show``: the registry edged would use now (file + what the broker holds retained), with sources."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path
from typing import IO, Any

from edged.devices.discovery import open_registry
from edged.devices.discovery.merge import Merged
from edged.devices.discovery.store import DiscoveringStore
from edged.devices.prompts import actions_text
from edged.devices.registry import Action


def add_parser(sub: Any) -> None:
    p = sub.add_parser("registry", help="device registry tools")
    registry_sub = p.add_subparsers(dest="registry_command", required=True)
    show = registry_sub.add_parser(
        "show", help="print the merged registry (file + discovered devices) and where each device comes from"
    )
    show.add_argument("--config", type=Path, help="edged configuration (registry file, discovery, broker)")
    show.add_argument("--json", action="store_true", help="the registry as JSON, each device with its source")
    show.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the broker")


def read_retained(
    store: DiscoveringStore, topics: list[str], receive: Any, *, host: str, port: int, **auth: Any
) -> None:
    """Feed every retained discovery message to ``receive``: subscribe, then a marker of our own tells when the
    broker has sent all of them (it delivers a client's messages in order)."""
    from edged.bus.client import EdgedClient

    marker = f"edged-registry-show/{uuid.uuid4().hex}"
    with EdgedClient("", host=host, port=port, **auth) as client:
        for topic in topics:
            client.subscribe(topic)
        client.subscribe(marker)
        client.publish(marker, b"done")
        client.wait_for(lambda m: m.topic == marker)
        for msg in client.messages():
            if msg.topic != marker and msg.retained:
                receive(msg.topic, msg.payload)


def describe(merged: Merged) -> list[str]:
    lines = [f"registry {merged.registry.name} (version {merged.registry.version})"]
    for area in merged.registry.areas:
        devices = [d for d in merged.registry.devices if d.area == area.id]
        if not devices:
            continue
        lines.append(f"{area.id} ({area.name}):")
        for d in devices:
            lines.append(f"  {d.id} [{d.type}, {merged.sources.get(d.id, 'file')}] {d.name}: {actions_text(d)}")
            confirm = [_confirm_text(n, a) for n, a in d.all_actions().items() if a.confirm or a.confirm_if]
            if confirm:
                lines.append(f"      needs confirmation: {', '.join(confirm)}")
    return lines


def _confirm_text(name: str, action: Action) -> str:
    rule = action.confirm_if
    if action.confirm or rule is None:
        return name
    limits = [
        f"{rule.param} > {rule.above:g}" if rule.above is not None else "",
        f"{rule.param} < {rule.below:g}" if rule.below is not None else "",
    ]
    return f"{name} ({' or '.join(x for x in limits if x)})"


def main(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    from edged.ops.logs import setup_logging
    from edged.settings import load_settings

    out = out or sys.stdout
    setup_logging("warning", "console", stream=sys.stderr)  # stdout is the registry
    s = load_settings(args.config)
    store, watcher = open_registry(s.devices, on_change=lambda _r: None)
    if store is None:
        sys.stderr.write("edged: no registry file and no discovery configured (devices.registry, devices.discover)\n")
        return 2
    if watcher is not None:
        auth = {"username": s.mqtt.username, "password": s.mqtt.resolved_password(), "timeout": args.timeout}
        read_retained(watcher.store, watcher.topics(), watcher.receive, host=s.mqtt.host, port=s.mqtt.port, **auth)
    sources = (
        store.sources
        if isinstance(store, DiscoveringStore)
        else dict.fromkeys((d.id for d in store.current.devices), "file")
    )
    merged = Merged(store.current, sources)
    if args.json:
        devices = [
            {**d.model_dump(mode="json", exclude_defaults=True), "source": sources[d.id]}
            for d in merged.registry.devices
        ]
        doc = {**merged.registry.model_dump(mode="json", exclude={"devices"}), "devices": devices}
        out.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    else:
        out.write("\n".join(describe(merged)) + "\n")
    return 0
