"""``edged demo``: the daemon's main job end to end, offline.

Starts edged against the configured broker on SmolLM2-135M-Instruct (a real, small instruct
model shipped on PyPI as GGUF, imported once into edged's cache) or on the tiny random Qwen3,
sends commands and a query over MQTT the way any caller would, prints each result with the
latency the caller saw and the layer that resolved each command (sentence templates, registry
rules or the model), then shuts down.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from edged.app import Daemon
from edged.bus.client import EdgedClient
from edged.engine.blas import preload_blas
from edged.models.store import OFFLINE_MODELS, offline_model_path
from edged.ops.stats import peak_rss_mb
from edged.settings import load_settings

DEMO_REQUESTS: list[tuple[str, dict[str, object]]] = [
    ("command", {"text": "turn off the living room lights"}),
    ("command", {"text": "dim the hallway to 30 percent"}),
    (
        "query",
        {
            "text": "why is pump 3 vibrating?",
            "include_reasoning": True,
            "context": {
                "pump3": {
                    "vibration_mm_s": 7.9,
                    "vibration_normal_mm_s": 2.5,
                    "bearing_temp_c": 71,
                    "flow_m3_h": 11.2,
                    "flow_normal_m3_h": 15,
                }
            },
        },
    ),
]

HOME_REGISTRY = Path(__file__).resolve().parent.parent / "config" / "registry-home.toml"  # in a source checkout
READY_TIMEOUT_S = 120  # model load and prompt warm-up on a slow CPU


def run_demo(config: Path | None, which: str = "smollm2") -> int:
    overrides = {"node_id": f"demo-{os.getpid()}", "mqtt": {"session_expiry_s": 0}}
    settings = load_settings(config, **overrides)
    preload_blas(settings.model.blas)  # before mlx is imported
    from edged.engine.select import create_engine  # the daemon's factory: model.engine is honoured

    model = {"path": str(offline_model_path(which, settings.model.engine)), "seed": 0, **OFFLINE_MODELS[which]}
    if settings.devices.registry is None and HOME_REGISTRY.is_file():  # commands become device actions, not dispatched
        overrides["devices"] = {"registry": str(HOME_REGISTRY), "dispatch": False}
    # The random-weight model's short budget cannot finish a structured diagnosis: free text there.
    settings = load_settings(config, **overrides, model=model, diagnostics={"structured": which != "tiny"})
    daemon = Daemon(settings, lambda s: create_engine(s.model))
    started = time.monotonic()
    daemon.start()
    if not daemon.ready.wait(READY_TIMEOUT_S):
        print(f"edged did not come online: is an MQTT broker running on {settings.mqtt.host}:{settings.mqtt.port}?")
        daemon.stop()
        return 1
    print(
        f"edged online on {daemon.base} after {time.monotonic() - started:.1f} s"
        " (model load, prompt and template warm-up included)\n"
    )
    try:
        with EdgedClient(daemon.base, host=settings.mqtt.host, port=settings.mqtt.port, timeout=300) as client:
            for kind, body in DEMO_REQUESTS:
                sent = time.monotonic()
                result = client.request(kind, body)
                latency_ms = (time.monotonic() - sent) * 1000
                print(f"--> {daemon.base}/{kind}: {json.dumps(body)}")
                print(f"<-- {json.dumps(result, indent=2, ensure_ascii=False)}")
                inside = result["timing_ms"]["total"]
                path = (result.get("result") or {}).get("resolved_by")
                print(
                    f"    caller saw {latency_ms:.0f} ms; edged {inside:.0f} ms"
                    + (f" (resolved by {path})" if path else " (queue + model)")
                    + f"; bus {latency_ms - inside:.0f} ms\n"
                )
    finally:
        daemon.stop()
    print(f"peak RSS {peak_rss_mb()} MB")
    if which == "tiny":
        print("The tiny model has random weights, so its text is nonsense by design.")
    print("Production model: Qwen/Qwen3-4B-MLX-4bit (edged model pull Qwen/Qwen3-4B-MLX-4bit; model.path = that id).")
    return 0
