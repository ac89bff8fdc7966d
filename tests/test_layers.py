"""Import rules between the packages, read from the source with ``ast``, and the service run without mlx."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "edged"
COMPOSITION = {"edged.app", "edged.cli", "edged.demo"}  # top-level modules that compose the rest
ENGINE_LIBRARIES = ("mlx", "mlx_lm", "llama_cpp")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every module ``path`` imports (at any depth: lazy imports in functions count too), with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno))
            found += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
    return found


MODULES = {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _importers(*roots: str) -> dict[str, list[str]]:
    """Modules importing any of ``roots`` (or a submodule), with the offending imports."""
    hits: dict[str, list[str]] = {}
    for module, imports in MODULES.items():
        bad = [f"{name}:{line}" for name, line in imports if any(name == r or name.startswith(r + ".") for r in roots)]
        if bad:
            hits[module] = bad
    return hits


def _inside(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_the_rules_see_the_modules() -> None:
    """The scan covers the package (a broken walk would pass every rule)."""
    assert {"edged.engine.mlx", "edged.bus.mqtt", "edged.service.handler", "edged.app"} <= MODULES.keys()
    assert "edged.engine.mlx" in _importers("mlx")


def test_only_engine_and_models_import_mlx() -> None:
    """mlx and mlx_lm stay inside edged.engine and edged.models (the bench's baseline imports them lazily,
    to measure plain mlx-lm beside edged's engine)."""
    allowed = {"edged.bench.baseline"}
    outside = {
        m: hits for m, hits in _importers("mlx", "mlx_lm").items() if not _inside(m, "edged.engine", "edged.models")
    }
    assert set(outside) <= allowed, outside


def test_only_bus_imports_paho() -> None:
    """The MQTT library is the bus's business alone."""
    outside = {m: hits for m, hits in _importers("paho").items() if not _inside(m, "edged.bus")}
    assert outside == {}


def test_engine_types_import_no_engine_library() -> None:
    """The engine boundary is shared by every engine, so it imports none of them (nor an engine module)."""
    names = [name for name, _line in MODULES["edged.engine.types"]]
    assert not [n for n in names if n.split(".")[0] in ENGINE_LIBRARIES]
    assert not [n for n in names if n.startswith("edged.engine.") and not n.startswith("edged.engine.errors")]


ENGINE_NEUTRAL = (
    "edged.engine.queueing",
    "edged.engine.records",
    "edged.engine.scheduled",
)  # both engines build on them
ENGINE_SPECIFIC = ("edged.engine.mlx", "edged.engine.scheduler", "edged.engine.forward", "edged.engine.llamacpp")


def test_engine_neutral_modules_import_no_engine() -> None:
    """What both engines share imports neither engine library nor either engine's own modules."""
    assert set(ENGINE_NEUTRAL) <= MODULES.keys()
    for module in ENGINE_NEUTRAL:
        names = [name for name, _line in MODULES[module]]
        assert not [n for n in names if n.split(".")[0] in ENGINE_LIBRARIES], module
        assert not [n for n in names if any(n == e or n.startswith(e) for e in ENGINE_SPECIFIC)], module


def test_no_package_imports_the_composition_modules() -> None:
    """app, cli and demo sit on top: only they may import each other."""
    hits = {m: h for m, h in _importers(*COMPOSITION).items() if m not in COMPOSITION}
    assert hits == {}


SCRIPT = textwrap.dedent(
    """
    import sys, time
    from importlib.abc import MetaPathFinder

    class NoEngineLibraries(MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("mlx", "mlx_lm"):
                raise ImportError(f"blocked: {name}")
            return None

    sys.meta_path.insert(0, NoEngineLibraries())

    import edged.devices.commands, edged.service.inbox, edged.service.intake, edged.service.worker
    from edged.engine.types import Generation
    from edged.protocol import Request
    from edged.service.handler import Job, Service
    from edged.service.sessions import SessionStore
    from edged.settings import ModelSettings

    class Engine:
        name, supports_thinking = "fake", True

        def submit(self, request, on_done):
            request.should_stop()
            on_done(Generation(answer="fine", reasoning="hm", prompt_tokens=5, completion_tokens=3,
                               reasoning_tokens=1, prefill_ms=1.0, decode_ms=2.0, finish_reason="stop"))

        def count_tokens(self, text):
            return len(text.split())

    sessions = SessionStore(max_turns=4, max_tokens=512, idle_s=60, max_sessions=4)
    service = Service(Engine(), sessions, ModelSettings(path="/models/none"))
    job = Job(kind="query", request=Request(id="q1", text="is pump 3 ok?"), received_at=time.monotonic(),
              deadline=None, reply_topic="r", include_reasoning=False)
    result = service.handle(job)
    assert result.status == "ok" and result.result["text"] == "fine", result
    assert not [m for m in sys.modules if m.split(".")[0] in ("mlx", "mlx_lm")]
    print("served", result.id)
    """
)


@pytest.mark.timeout(120)
def test_the_service_runs_without_mlx() -> None:
    """With mlx unimportable, the service side imports and serves a request through a fake engine."""
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "served q1"
