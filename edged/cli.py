"""Command line: ``edged run``, ``ask``, ``registry show``, ``config check``, ``model``, ``service install``,
``demo``, ``eval``, ``bench``, ``bench-diagnostics``."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import queue
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import structlog
from pydantic import ValidationError

from edged import __version__
from edged import ask as ask_cli
from edged.engine.blas import preload_blas
from edged.models import cli as model_cli
from edged.ops.logs import setup_logging
from edged.settings import Settings, error_lines, load_settings, warn_exposed_secret

if TYPE_CHECKING:
    from edged.app import Control

EXIT_CONFIG = 2
log = structlog.get_logger("edged.cli")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edged", description="Local-LLM daemon: MQTT requests in, JSON results out.")
    p.add_argument("--version", action="version", version=f"edged {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon until SIGTERM/SIGINT; SIGHUP re-reads the configuration")
    run.add_argument(
        "--config",
        type=Path,
        help="TOML settings file (default: $EDGED_CONFIG, /etc/edged/edged.toml, ~/.config/edged/edged.toml)",
    )

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="print the validated settings (secrets masked) or every error")
    check.add_argument("--config", type=Path)

    model_cli.add_parser(sub)
    ask_cli.add_parser(sub)
    from edged.devices.discovery import show as registry_cli

    registry_cli.add_parser(sub)

    ev = sub.add_parser("eval", help="device-command accuracy over a JSONL set (dry run, same code path as the daemon)")
    ev.add_argument("cases", type=Path, help="JSONL: {text, expect: [{device, action, params}]}")
    ev.add_argument("--registry", type=Path, required=True)
    ev.add_argument(
        "--model",
        default="smollm2",
        help="a model path or cached repo id; default: the offline SmolLM2; none: no model",
    )
    ev.add_argument("--compare", action="store_true", help="also run the model alone (no templates, rules, grounding)")
    ev.add_argument(
        "--grounding", action="store_true", help="on the cases left to the model: grounded vs plain, side by side"
    )
    ev.add_argument("--misses", action="store_true", help="print the cases each run got wrong")
    ev.add_argument("--language", help="language of cases without one (default: the commands.language setting)")
    ev.add_argument("--runs", help="comma-separated runs: pipeline, unconstrained, model only, model grounded")
    ev.add_argument("--limit", type=int, help="only the first N cases")
    ev.add_argument("--json", type=Path, help="also write the numbers here")
    ev.add_argument("--config", type=Path)

    sim = sub.add_parser("simulate", help="publish pump-line readings with an optional fault (for diagnostics demos)")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=1883)
    sim.add_argument("--prefix", default="plant")
    sim.add_argument("--pumps", type=int, default=4)
    sim.add_argument("--fault", choices=["bearing", "cavitation", "blockage"])
    sim.add_argument("--fault-pump", type=int, default=3)
    sim.add_argument("--steps", type=int, default=60, help="rounds of readings (the fault grows over them)")
    sim.add_argument("--interval", type=float, default=1.0, help="seconds between rounds (0: one burst)")

    service = sub.add_parser("service", help="run edged as a system service")
    service_sub = service.add_subparsers(dest="service_command", required=True)
    install = service_sub.add_parser(
        "install", help="write the systemd unit or launchd plist with this installation's paths"
    )
    which = install.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--systemd", action="store_true", help="unit + sample drop-in (default into /etc/systemd/system)"
    )
    which.add_argument("--launchd", action="store_true", help="plist for /Library/LaunchDaemons (or --agent)")
    install.add_argument("--agent", action="store_true", help="launchd: a per-user agent in ~/Library/LaunchAgents")
    install.add_argument("--config", type=Path, help="the config file the service reads")
    install.add_argument("--dest", type=Path, help="write into this directory instead of the system's")
    install.add_argument("--user", help="launchd daemon: the account edged runs as (default: the invoking user)")

    demo = sub.add_parser(
        "demo", help="end to end: start edged on an offline model, send commands and a query, print the results"
    )
    demo.add_argument("--config", type=Path)
    demo.add_argument(
        "--model",
        choices=["smollm2", "tiny"],
        default="smollm2",
        help="smollm2: SmolLM2-135M-Instruct imported from PyPI; tiny: random-weight Qwen3 (nonsense text)",
    )

    from edged.bench.run import add_arguments as bench_arguments

    bench_arguments(
        sub.add_parser(
            "bench", help="latency, throughput and memory of edged over MQTT, beside raw mlx-lm (and llama.cpp)"
        )
    )
    from edged.bench.diagnostics import add_arguments as diagnostics_arguments

    diagnostics_arguments(
        sub.add_parser(
            "bench-diagnostics",
            help="diagnostic queries over simulated pump-line readings: tokens, progress, thinking budget",
        )
    )
    return p


def _load(config: Path | None, **overrides: object) -> Settings | None:
    try:
        return load_settings(config, **overrides)
    except FileNotFoundError as exc:
        print(f"edged: {exc}", file=sys.stderr)
    except ValidationError as exc:
        print(f"edged: {exc.error_count()} configuration error(s):", file=sys.stderr)
        for line in error_lines(exc):
            print(f"  {line}", file=sys.stderr)
    return None


def _control_on_signals() -> queue.SimpleQueue[Control]:
    """SIGTERM/SIGINT put ``stop``, SIGHUP ``reload`` on the daemon's control queue (SimpleQueue.put is signal-safe)."""
    from edged.app import RELOAD, STOP

    control: queue.SimpleQueue[Control] = queue.SimpleQueue()

    def handler(signum: int, _frame: object) -> None:
        log.info("signal", signal=signal.Signals(signum).name)
        control.put(RELOAD if signum == signal.SIGHUP else STOP)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, handler)
    return control


def _install_service(args: argparse.Namespace) -> int:
    from edged.ops import service_files as sf

    config = str(args.config.expanduser().absolute()) if args.config else None
    if args.systemd:
        config = config or sf.DEFAULT_CONFIG
        written = sf.install_systemd(args.dest or Path("/etc/systemd/system"), config)
        steps = sf.systemd_next_steps(config)
    else:
        scope: sf.LaunchdScope = "agent" if args.agent else "daemon"
        user = args.user or os.environ.get("SUDO_USER") or getpass.getuser()
        written = sf.install_launchd(scope, args.dest, config, user, Path.home())
        steps = sf.launchd_next_steps(scope, written[0])
    for path in written:
        print(f"wrote {path}")
    print(steps)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "service":
        return _install_service(args)
    if args.command == "config":
        settings = _load(args.config)
        if settings is None:
            return EXIT_CONFIG
        print(settings.model_dump_json(indent=2))
        return 0
    if args.command == "model":
        return model_cli.main(args)
    if args.command == "ask":
        return ask_cli.main(args)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # `run` never downloads
    # transformers' import-time advice that PyTorch is missing bypasses our log format; MLX runs the model.
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    if args.command == "registry":
        from edged.devices.discovery import show as registry_cli

        return registry_cli.main(args)
    if args.command == "eval":
        return _eval(args)
    if args.command == "simulate":
        import time

        from edged.bus.client import EdgedClient
        from edged.diagnostics import simulator

        with EdgedClient(args.prefix, host=args.host, port=args.port) as client:
            n = simulator.run(
                client.publish,
                args.prefix,
                args.pumps,
                fault=args.fault,
                fault_pump=args.fault_pump,
                steps=args.steps,
                interval_s=args.interval,
                wait=time.sleep,
            )
        print(f"published {n} readings under {args.prefix}/")
        return 0
    if args.command == "demo":
        from edged.demo import run_demo

        setup_logging("warning")
        return run_demo(args.config, args.model)
    if args.command in ("bench", "bench-diagnostics"):
        from edged.bench import diagnostics
        from edged.bench import run as bench

        setup_logging("info", "console" if sys.stderr.isatty() else "json", stream=sys.stderr)
        return (bench.run if args.command == "bench" else diagnostics.run)(args)

    settings = _load(args.config)
    if settings is None:
        return EXIT_CONFIG
    setup_logging(settings.log.level, settings.log.format, levels=settings.log.levels)
    warn_exposed_secret(args.config)
    control = _control_on_signals()
    preload_blas(settings.model.blas)  # before mlx is first imported
    from edged.app import run
    from edged.engine.select import create_engine
    from edged.models.files import ModelInvalid
    from edged.ops.metrics import MetricsUnavailable

    try:
        code = run(
            settings,
            lambda s: create_engine(s.model),
            control=control,
            reload_settings=lambda: load_settings(args.config),
        )
    except ModelInvalid as exc:  # includes ModelNotFound
        log.error("model_unusable", error=str(exc))
        return EXIT_CONFIG
    except MetricsUnavailable as exc:
        log.error("metrics_unavailable", error=str(exc))
        return EXIT_CONFIG
    return code


def entry() -> NoReturn:
    """The ``edged`` command: :func:`main`, then exit without the interpreter's teardown.

    Every command has closed what it owns when ``main`` returns (the daemon its bus, ledger and engine
    thread). What is left are native libraries' threads and static objects (MLX, the tokenizer), whose
    teardown at exit can abort the process ("terminate called without an active exception", SIGABRT),
    turning a clean stop, or the daemon's exit code 3, into a crash for the service manager."""
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _eval(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    if settings is None:
        return EXIT_CONFIG
    setup_logging("info", "console" if sys.stderr.isatty() else "json", stream=sys.stderr)
    preload_blas(settings.model.blas)
    from edged.evaluate import cli_eval

    return cli_eval(args, settings)


if __name__ == "__main__":
    entry()
