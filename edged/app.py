"""Composition root: start-up and shutdown order in one place (``Daemon.start`` reads as the table of contents).

Received messages are routed by :mod:`edged.service.inbox`, results published by :mod:`edged.service.delivery`;
the engine's scheduler is the one queue (:mod:`edged.service.worker` carries jobs to it)."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import structlog

from edged import __version__
from edged.bus.mqtt import Bus, BusConfig, Inbound
from edged.devices.commands import DeviceControl
from edged.devices.confirmations import Confirmations
from edged.devices.discovery import open_registry
from edged.devices.state import DeviceStates
from edged.diagnostics.diagnosis import Diagnostics
from edged.diagnostics.telemetry import TelemetryStore
from edged.engine.types import Engine
from edged.ops.health import SERVING, Monitor, StatusBoard
from edged.ops.homeassistant import Announcer, BusyFlag, device_config
from edged.ops.logs import apply_levels
from edged.ops.metrics import MetricsServer
from edged.ops.periodic import Periodic
from edged.ops.sdnotify import Notifier, watchdog_interval
from edged.ops.stats import Stats, peak_rss_mb, rss_bytes
from edged.protocol import CONTRACT_VERSION, Result
from edged.service.delivery import Delivery
from edged.service.handler import Job, Service
from edged.service.inbox import Inbox
from edged.service.intake import Admin, Intake
from edged.service.ledger import Ledger, ledger_path
from edged.service.progress import Cancellations, ProgressReporter
from edged.service.reload import Reloader, ReloadPlan
from edged.service.sessions import SessionStore
from edged.service.worker import Worker
from edged.settings import Settings

log = structlog.get_logger("edged.app")

STOP, RELOAD = "stop", "reload"  # control messages for the main thread (signals); admin requests come as Admin
Control = str | Admin  # what the main thread is asked to do: STOP, RELOAD or an admin request
PACKET_HEADROOM = 65_536 + 1024  # MQTT 5 Maximum Packet Size: the payload limit plus the longest topic and properties
EXIT_BROKER_REFUSED = 3  # the broker refused edged's credentials or certificate: a restart cannot help


def _bus_config(s: Settings) -> BusConfig:
    return BusConfig(
        host=s.mqtt.host,
        port=s.mqtt.port,
        client_id=s.client_id,
        mqtt5=s.mqtt.protocol == "5",
        username=s.mqtt.username,
        password=s.mqtt.resolved_password(),
        keepalive_s=s.mqtt.keepalive_s,
        session_expiry_s=s.mqtt.session_expiry_s,
        reconnect_min_s=s.mqtt.reconnect_min_s,
        reconnect_max_s=s.mqtt.reconnect_max_s,
        receive_maximum=s.mqtt.receive_maximum,
        max_packet_size=s.requests.max_payload_bytes + PACKET_HEADROOM,
        tls=s.mqtt.tls.context() if s.mqtt.tls.enabled else None,
    )


class Daemon:
    def __init__(
        self,
        settings: Settings,
        engine_factory: Callable[[Settings], Engine],
        *,
        notifier: Notifier | None = None,
        control: queue.SimpleQueue[Control] | None = None,
        reload_settings: Callable[[], Settings] | None = None,
    ):
        self.settings = settings
        self._engine_factory = engine_factory
        self.base = settings.base
        self.ready = threading.Event()
        self.control: queue.SimpleQueue[Control] = control or queue.SimpleQueue()
        self.notifier = notifier or Notifier.from_env()
        self._stopping = threading.Event()
        self.exit_code = 0
        self._ready_lock = threading.Lock()
        self._started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.cancellations = Cancellations()
        self.telemetry = TelemetryStore(settings.telemetry)
        self.ledger = Ledger(
            ledger_path(settings.state_dir, settings.client_id),
            window_s=settings.requests.dedupe_window_s,
            max_rows=settings.requests.dedupe_max_rows,
        )
        self.devices = self._device_control(settings)
        self.intake = Intake(
            self.base, settings, devices=self.devices, telemetry=self.telemetry, cancellations=self.cancellations
        )
        self.board = StatusBoard(publish=self._publish_status, notifier=self.notifier, info=self._identity)
        self.monitor = Monitor(healthy=self._healthy, notifier=self.notifier, on_change=self._health_changed)
        self.stats = Stats(window_s=settings.stats.window_s)
        self.announcer = Announcer(settings.state_dir)  # Home Assistant discovery
        self.activity = BusyFlag(lambda on: self._publish_retained(self._topic("busy"), b"ON" if on else b"OFF"))
        self._reloader = Reloader(reload_settings, self._apply, self.notifier) if reload_settings else None
        self.engine: Engine | None = None
        self.service: Service | None = None
        self.worker: Worker | None = None
        self.bus: Bus | None = None
        self.metrics: MetricsServer | None = None
        self.delivery: Delivery | None = None
        self.inbox: Inbox | None = None
        self.progress = ProgressReporter(self._publish, self.base, settings.diagnostics.progress_interval_s)
        self._health_ticks = Periodic("edged-health", self._health_interval(), self.monitor.check)
        self._stats_ticks = Periodic("edged-stats", settings.stats.interval_s, self._publish_stats)

    # -- start-up and shutdown -------------------------------------------------------------
    def start(self) -> None:
        """Connect (requests wait in the queue), load the model, serve; online and READY=1 once all three hold."""
        s = self.settings
        self.worker = Worker(queue_size=s.requests.queue_size, on_done=self._deliver)
        self._health_ticks.start()  # the watchdog is fed during the model load too
        self._start_metrics()
        self._connect()
        engine, service = self._load_model()
        self._warm_up(service)
        self.worker.start(service, engine)
        self._stats_ticks.start()
        self._go_online()

    def _start_metrics(self) -> None:
        m = self.settings.metrics
        if m.prometheus_port is not None:
            self.metrics = MetricsServer(m.host, m.prometheus_port, self.stats_document, self._device)

    def _connect(self) -> None:
        """The bus, and what routes its messages and publishes results; requests queue from now on."""
        s = self.settings
        self.bus = Bus(
            _bus_config(s),
            on_message=self._on_message,
            on_ready=self._on_connected,
            will=(self._topic("status"), self.board.document("offline")),
            on_fatal=self._broker_refused,
            on_waiting=self._waiting_for_broker,
        )
        assert self.worker is not None
        self.delivery = Delivery(
            self.bus,
            self.ledger,
            record=self._record,
            answered=self.activity.finished,
            finished=self.progress.forget,
            publish_timeout_s=lambda: self.settings.mqtt.publish_timeout_s,
            queue_depth=self.worker.depth,
            ledger_failed=self._ledger_failed,
        )
        self.inbox = Inbox(
            self.bus,
            self.intake,
            self.ledger,
            self.worker,
            self.delivery,
            admin=self.control.put,  # carried out on the main thread
            stopping=self._stopping,
            model_name=lambda: self.engine.name if self.engine else None,
            queue_size=lambda: self.settings.requests.queue_size,
            claim=self._claim,
            accepted=self.activity.started,
            ledger_failed=self._ledger_failed,
        )
        self.notifier.status(f"connecting to MQTT {s.mqtt.host}:{s.mqtt.port}")
        discovery = self.discovery.topics() if self.discovery else []
        self.bus.start(self.intake.subscriptions(), watch=[*self.intake.watched(), *discovery])

    def _load_model(self) -> tuple[Engine, Service]:
        s = self.settings
        self.notifier.status(f"loading model {s.model.display_name()}")
        loading = time.monotonic()
        engine = self.engine = self._engine_factory(s)
        if self.metrics is not None:
            self.metrics.model_loaded(time.monotonic() - loading)
        sessions = SessionStore(
            max_turns=s.sessions.max_turns,
            max_tokens=s.sessions.max_tokens,
            idle_s=s.sessions.idle_s,
            max_sessions=s.sessions.max_sessions,
        )
        diagnostics = (
            Diagnostics(
                self.telemetry,
                budget_tokens=s.diagnostics.telemetry_tokens,
                max_sensors=s.diagnostics.max_sensors,
                count_tokens=engine.count_tokens,
                registry=self.devices.store.get if self.devices is not None else lambda: None,
            )
            if s.diagnostics.structured
            else None
        )
        self.service = Service(
            engine,
            sessions,
            s.model,
            devices=self.devices,
            diagnostics=diagnostics,
            cancelled=self.cancellations,
            report=self.progress,
        )
        return engine, self.service

    def _warm_up(self, service: Service) -> None:
        if not self.settings.model.warm_up:
            return
        self.notifier.status("warming up the prompt cache")
        started = time.monotonic()
        took = service.warm_up()
        log.info("warmed_up", seconds=round(time.monotonic() - started, 2), **{f"{k}_s": v for k, v in took.items()})

    def _device_control(self, s: Settings) -> DeviceControl | None:
        store, self.discovery = open_registry(s.devices, on_change=lambda _registry: self._watch_registry())
        if store is None:
            return None
        log.info(
            "registry_loaded",
            path=str(s.devices.registry),
            discover=s.devices.discover,
            version=store.current.version,
            devices=len(store.current.devices),
        )
        return DeviceControl(
            store,
            DeviceStates(),
            Confirmations(s.devices.confirm_ttl_s),
            self._publish_device,
            dispatch_default=s.devices.dispatch,
            claim=self.ledger.claim,
            commands=s.commands,
        )

    def _watch_registry(self) -> None:
        """The registry changed: follow the state topics of the devices it names now."""
        if self.bus is not None:
            self.bus.watch(self.intake.watched())

    def _publish(self, topic: str, payload: bytes) -> None:
        if self.bus is not None:
            self.bus.publish(topic, payload)

    def _publish_retained(self, topic: str, payload: bytes) -> None:
        if self.bus is not None:
            self.bus.publish(topic, payload, retain=True)

    def _ledger_failed(self) -> None:
        self.board.set("degraded", reason="ledger_failed", only_from=SERVING)

    def _publish_device(self, topic: str, payload: bytes) -> bool:
        """True once the broker took the command (off the network thread: a confirm there cannot wait)."""
        if self.bus is None:
            return False
        delivery = self.bus.publish(topic, payload, retry_refused=False)
        taken = (
            None
            if self.bus.on_network_thread()
            else (delivery.wait(self.settings.mqtt.publish_timeout_s) and delivery.refused is None)
        )
        log.info("device_command", topic=topic, payload=payload.decode(errors="replace"), taken=taken)
        return taken is not False

    def _broker_refused(self, _reason: str) -> None:
        """The bus gave up (bad credentials or certificate): stop, and exit with a code the service manager
        does not restart."""
        self.exit_code = EXIT_BROKER_REFUSED
        self.control.put(STOP)

    def _waiting_for_broker(self, attempt: int, retry_in_s: float) -> None:
        s = self.settings.mqtt
        self.notifier.status(
            f"waiting for the MQTT broker at {s.host}:{s.port} (attempt {attempt}, next in {retry_in_s:g} s)"
        )

    def serve(self) -> None:
        """On the main thread until STOP: reloads asked for by SIGHUP or {base}/admin/reload, one at a time."""
        while (item := self._next_control()) != STOP:
            self.reload(item if isinstance(item, Admin) else None)

    def _next_control(self) -> Control:
        """The next control message. Python runs signal handlers only on the main thread, between bytecodes,
        and a blocking wait is cut short only by a signal the kernel delivers to that thread; one delivered
        to another thread (MLX's, OpenBLAS's) would wait for the next message. Waking every second bounds
        that wait (seen once: a SIGTERM never handled while the main thread slept in get())."""
        while True:
            try:
                return self.control.get(timeout=1.0)
            except queue.Empty:
                continue

    def reload(self, admin: Admin | None = None) -> ReloadPlan:
        """Re-read the configuration: apply what can change now, keep the rest, keep everything on error."""
        if self._reloader is None:
            outcome = ReloadPlan(self.settings, error="edged was started without a configuration source to reload")
        else:
            outcome = self._reloader(self.settings)
        if admin is not None and self.bus is not None:
            payload = outcome.result(admin.request.id or "unknown").to_json()
            self.bus.publish(
                admin.reply_topic, payload, correlation_data=admin.origin.correlation_data, ack=admin.origin
            )
        return outcome

    def _apply(self, settings: Settings) -> None:
        """Swap in reloaded settings; queued requests stay queued, the one in progress keeps its sampling."""
        self.settings = settings
        self.intake.configure(settings)
        if self.service is not None:
            self.service.configure(settings.model)
        if self.devices is not None:  # language, layers, grounding, temperature: from the next command on
            self.devices.commands = settings.commands
        self.stats.window_s = settings.stats.window_s
        self.ledger.configure(window_s=settings.requests.dedupe_window_s, max_rows=settings.requests.dedupe_max_rows)
        self._stats_ticks.interval = settings.stats.interval_s
        self._health_ticks.interval = self._health_interval()
        apply_levels(settings.log.level, settings.log.levels)

    def stop(self) -> None:
        """Finish the request in progress, leave unstarted ones to the broker, go offline, disconnect."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        s = self.settings
        log.info("stopping", grace_s=s.shutdown_grace_s)
        self.notifier.stopping("stopping: finishing the request in progress")
        self.board.set("stopping")
        self._health_ticks.stop()
        self._stats_ticks.stop()
        left = self.worker.stop(timeout=s.shutdown_grace_s) if self.worker else []
        if left:
            log.info("requests_left_for_redelivery", count=len(left), ids=[j.request.id for j in left])
        if self.bus is not None and self.bus.failure is None:
            if not self.bus.wait_confirmed(s.mqtt.publish_timeout_s):
                log.warning("results_unconfirmed", count=self.bus.unconfirmed())
            self._publish_stats()  # the last figures stay retained while edged is away
            offline = self.board.set("offline")
            if offline is not None:
                offline.wait(s.mqtt.publish_timeout_s)
        if self.bus is not None:
            self.bus.stop()
        if self.metrics is not None:
            self.metrics.stop()
        if self.engine is not None:  # its thread joined: none is left inside the model at exit
            self.engine.close()
        self.ledger.close()
        log.info("stopped", peak_rss_mb=peak_rss_mb())

    # -- messages in, results out (edged.service.inbox, edged.service.delivery) ------------
    def _on_message(self, msg: Inbound) -> None:
        assert self.inbox is not None
        self.inbox.receive(msg)

    def _deliver(self, job: Job, result: Result) -> None:
        assert self.delivery is not None
        self.delivery.result(job, result)

    # -- status and health -----------------------------------------------------------------
    def _topic(self, suffix: str) -> str:
        return self.settings.instance_topic(suffix)  # per instance, also in a shared group

    def _device(self) -> dict[str, str]:
        model = self.engine.name if self.engine else self.settings.model.display_name()
        return {"node_id": self.settings.node_id, "model": model, "version": __version__}

    def _identity(self) -> dict[str, Any]:
        return {**self._device(), "contract": CONTRACT_VERSION, "started_at": self._started_at}

    def stats_document(self) -> dict[str, Any]:
        """What ``{base}/stats`` and the Prometheus metrics report."""
        cache_bytes = getattr(self.engine, "cache_bytes", None)  # optional: engines with a prompt cache
        return self.stats.snapshot(
            state=self.board.state,
            queue_depth=self.worker.depth() if self.worker else 0,
            cache_bytes=cache_bytes() if callable(cache_bytes) else None,
            rss_bytes=rss_bytes(),
            reconnects=self.bus.reconnects if self.bus else 0,
        )

    def _publish_stats(self) -> None:
        if self.bus is not None:
            self.bus.publish(self._topic("stats"), json.dumps(self.stats_document()).encode(), retain=True)

    def _publish_status(self, body: bytes) -> threading.Event:
        if self.bus is None:
            done = threading.Event()
            done.set()
            return done
        return self.bus.publish(self._topic("status"), body, retain=True)

    def _on_connected(self) -> None:
        """Every (re)connect, once subscribed: the status again (and discovery), and online if the model is ready."""
        self.board.republish()
        s = self.settings
        config = device_config(topic=self._topic, base=self.base, reload_button=s.admin.reload_topic, **self._device())
        prefix, enabled = s.homeassistant.discovery_prefix, s.homeassistant.discovery
        for topic, payload in self.announcer.messages(enabled=enabled, prefix=prefix, node_id=s.node_id, config=config):
            self._publish_retained(topic, payload)
        self._go_online()

    def _go_online(self) -> None:
        with self._ready_lock:
            if self.ready.is_set() or self._stopping.is_set() or self.service is None:
                return
            if self.bus is None or not self.bus.connected.is_set():
                return  # the first connect will call again
            healthy = self.monitor.healthy
            self.board.set("online" if healthy else "degraded", reason=None if healthy else "worker_stuck")
            self.ready.set()
        self.notifier.ready(f"online: {self.base}")
        log.info("online", base=self.base, model=self.engine.name if self.engine else None)

    def _health_interval(self) -> float:
        return min(self.settings.health.check_interval_s, watchdog_interval() or float("inf"))

    def _healthy(self) -> bool:
        return self.worker is None or not self.worker.stuck(self.settings.health.stuck_after_s)

    def _health_changed(self, healthy: bool) -> None:
        if healthy:
            log.info("worker_recovered")
        else:
            job = self.worker.current if self.worker else None
            log.warning("worker_stuck", id=job.request.id if job else None, limit_s=self.settings.health.stuck_after_s)
        self.board.set(
            "online" if healthy else "degraded", reason=None if healthy else "worker_stuck", only_from=SERVING
        )

    def _record(self, result: Result) -> None:
        """Count a result: the stats document and, when enabled, Prometheus."""
        self.stats.record(result)
        if self.metrics is not None:
            self.metrics.record(result)

    def _claim(self, msg: Inbound) -> bool:
        """Messages that are not requests: device discovery configs."""
        if self.discovery is not None and self.discovery.handles(msg.topic):
            self.discovery.receive(msg.topic, msg.payload)
            return True
        return False


def run(
    settings: Settings,
    engine_factory: Callable[[Settings], Engine],
    *,
    control: queue.SimpleQueue[Control] | None = None,
    reload_settings: Callable[[], Settings] | None = None,
) -> int:
    """Run until STOP arrives on ``control`` (the CLI puts it there on SIGTERM/SIGINT, RELOAD on SIGHUP).

    Returns the exit code: 0, or :data:`EXIT_BROKER_REFUSED` when the broker refused edged's credentials or certificate.
    """
    daemon = Daemon(settings, engine_factory, control=control, reload_settings=reload_settings)
    started = time.monotonic()
    try:
        daemon.start()
        log.info("started", seconds=round(time.monotonic() - started, 2), base=daemon.base)
        daemon.serve()
    finally:
        daemon.stop()
    return daemon.exit_code
