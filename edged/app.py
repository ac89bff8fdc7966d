"""Composition root: start-up and shutdown order in one place, and where each received message goes."""

from __future__ import annotations

import hashlib
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
from edged.devices.registry import RegistryStore
from edged.devices.state import DeviceStates
from edged.diagnostics.diagnosis import Diagnostics
from edged.diagnostics.telemetry import TelemetryStore
from edged.ops.health import SERVING, Monitor, StatusBoard
from edged.ops.homeassistant import discovery
from edged.ops.logs import apply_levels
from edged.ops.metrics import MetricsServer
from edged.ops.periodic import Periodic
from edged.ops.sdnotify import Notifier, watchdog_interval
from edged.ops.stats import Stats, peak_rss_mb, rss_bytes
from edged.protocol import CONTRACT_VERSION, ErrorCode, Result
from edged.service.handler import Engine, Job, Service, error_result
from edged.service.intake import Admin, Intake, Reply
from edged.service.ledger import Ledger, Verdict, ledger_path
from edged.service.progress import Cancellations, ProgressReporter
from edged.service.reload import Outcome, Reloader
from edged.service.sessions import SessionStore
from edged.service.worker import Admission, Worker
from edged.settings import Settings

log = structlog.get_logger("edged.app")

STOP, RELOAD = "stop", "reload"  # control messages for the main thread (signals); admin requests come as Admin
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
        control: queue.SimpleQueue[Any] | None = None,
        reload_settings: Callable[[], Settings] | None = None,
    ):
        self.settings = settings
        self._engine_factory = engine_factory
        self.base = settings.base
        self.ready = threading.Event()
        self.control: queue.SimpleQueue[Any] = control or queue.SimpleQueue()
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
        self._reloader = Reloader(reload_settings, self._apply, self.notifier) if reload_settings else None
        self.engine: Engine | None = None
        self.service: Service | None = None
        self.worker: Worker | None = None
        self.bus: Bus | None = None
        self.metrics: MetricsServer | None = None
        self._health_ticks = Periodic("edged-health", self._health_interval(), self.monitor.check)
        self._stats_ticks = Periodic("edged-stats", settings.stats.interval_s, self._publish_stats)

    # -- start-up and shutdown -------------------------------------------------------------
    def start(self) -> None:
        """Connect (requests wait in the queue), load the model, serve; online and READY=1 once all three hold."""
        s = self.settings
        self.worker = Worker(
            None, queue_size=s.requests.queue_size, on_done=self._deliver, slots=s.model.scheduler.max_batch
        )
        self._health_ticks.start()  # the watchdog is fed during the model load too
        if s.metrics.prometheus_port is not None:
            self.metrics = MetricsServer(s.metrics.host, s.metrics.prometheus_port, self.stats_document, self._device)
        self.bus = Bus(
            _bus_config(s),
            on_message=self._on_message,
            on_ready=self._on_connected,
            will=(self._topic("status"), self.board.document("offline")),
            on_fatal=self._broker_refused,
            on_waiting=self._waiting_for_broker,
        )
        self.notifier.status(f"connecting to MQTT {s.mqtt.host}:{s.mqtt.port}")
        self.bus.start(self.intake.subscriptions(), watch=self.intake.watched())
        self.notifier.status(f"loading model {s.model.display_name()}")
        self.engine = self._engine_factory(s)
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
                count_tokens=self.engine.count_tokens,
                registry=self.devices.store.get if self.devices is not None else lambda: None,
            )
            if s.diagnostics.structured
            else None
        )
        report = ProgressReporter(self._publish, self.base, s.diagnostics.progress_interval_s)
        self.service = Service(
            self.engine,
            sessions,
            s.model,
            devices=self.devices,
            diagnostics=diagnostics,
            cancelled=self.cancellations,
            report=report,
        )
        if s.model.warm_up:
            self.notifier.status("warming up the prompt cache")
            started = time.monotonic()
            took = self.service.warm_up()
            log.info(
                "warmed_up", seconds=round(time.monotonic() - started, 2), **{f"{k}_s": v for k, v in took.items()}
            )
        self.worker.start(self.service)
        self._stats_ticks.start()
        self._go_online()

    def _device_control(self, s: Settings) -> DeviceControl | None:
        if s.devices.registry is None:
            return None
        store = RegistryStore(
            s.devices.registry, on_change=lambda _r: self.bus and self.bus.watch(self.intake.watched())
        )
        log.info(
            "registry_loaded",
            path=str(s.devices.registry),
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
        )

    def _publish(self, topic: str, payload: bytes) -> None:
        if self.bus is not None:
            self.bus.publish(topic, payload)

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
        """The bus gave up (bad credentials or certificate): stop, and exit with a code the service manager does not restart."""
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

    def _next_control(self) -> Any:
        """The next control message. Python runs signal handlers only on the main thread, between bytecodes,
        and a blocking wait is cut short only by a signal the kernel delivers to that thread; one delivered
        to another thread (MLX's, OpenBLAS's) would wait for the next message. Waking every second bounds
        that wait (seen once: a SIGTERM never handled while the main thread slept in get())."""
        while True:
            try:
                return self.control.get(timeout=1.0)
            except queue.Empty:
                continue

    def reload(self, admin: Admin | None = None) -> Outcome:
        """Re-read the configuration: apply what can change now, keep the rest, keep everything on error."""
        if self._reloader is None:
            outcome = Outcome(self.settings, error="edged was started without a configuration source to reload")
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
        self.ledger.close()
        log.info("stopped", peak_rss_mb=peak_rss_mb())

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
        ha = self.settings.homeassistant
        if ha.discovery and self.bus is not None:
            for topic, payload in discovery(prefix=ha.discovery_prefix, topic=self._topic, **self._device()):
                self.bus.publish(topic, payload, retain=True)
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

    # -- intake (network thread: decide, publish refusals, enqueue; never blocks) ----------
    def _on_message(self, msg: Inbound) -> None:
        assert self.bus is not None and self.worker is not None
        if self._stopping.is_set():
            return  # unacknowledged: the broker delivers it again after restart
        decision = self.intake.decide(msg)
        if decision is None:
            self.bus.ack(msg)
        elif isinstance(decision, Reply):
            self._refuse(msg, decision)
        elif isinstance(decision, Admin):
            self.control.put(decision)  # carried out on the main thread
        elif not self._admit(msg, decision):
            return  # a copy of a request edged knows: answered from the ledger, or acknowledged with the original
        elif self.worker.submit(decision) is Admission.BUSY:
            result = error_result(
                decision.request.id or "unknown",
                ErrorCode.BUSY,
                f"queue full ({self.settings.requests.queue_size} waiting); try again later",
                kind=decision.kind,
                model=self.engine.name if self.engine else None,
            )
            self._deliver(decision, result)

    def _admit(self, msg: Inbound, job: Job) -> bool:
        """True: run the job. Else a redelivery or a resent copy, dealt with here (see edged.service.ledger)."""
        assert self.bus is not None and job.request.id is not None
        # A copy is the same message again: topic, payload and MQTT 5 correlation data (another correlation is
        # another exchange the caller waits on, so it is not a copy).
        digest = hashlib.sha256(b"\0".join((msg.topic.encode(), msg.correlation_data or b"", msg.payload))).hexdigest()[
            :32
        ]
        try:
            seen = self.ledger.admit(job.request.id, job.reply_topic, redelivered=msg.dup, origin=msg, digest=digest)
        except Exception as exc:  # the ledger cannot say whether it ran: answer, free the broker's slot, say so
            self._ledger_failed(msg, job, exc)
            return False
        if seen.verdict is Verdict.CONFLICT:
            message = f"id {job.request.id!r} belongs to another request answered on this topic recently; use a new id"
            self._refuse(
                msg, Reply(job.reply_topic, error_result(job.request.id, ErrorCode.BAD_ID, message, kind=job.kind))
            )
            return False
        if seen.verdict in (Verdict.NEW, Verdict.RESUMED):
            if seen.verdict is Verdict.RESUMED:
                log.info("request_resumed", id=job.request.id, reply_topic=job.reply_topic)
            return True
        log.info(
            "duplicate_request", id=job.request.id, verdict=seen.verdict.value, dup=msg.dup, reply_topic=job.reply_topic
        )
        if seen.verdict in (Verdict.ANSWERED, Verdict.SURPLUS):
            self.bus.ack(msg)
        elif seen.verdict is Verdict.REPLAY and seen.result is not None:
            replay = Result.model_validate_json(seen.result).model_copy(update={"replayed": True})
            self.bus.publish(job.reply_topic, replay.to_json(), correlation_data=msg.correlation_data, ack=msg)
        return False  # PENDING: the original's acknowledgement covers it

    def _ledger_failed(self, msg: Inbound, job: Job, exc: Exception) -> None:
        log.exception("ledger_failed", id=job.request.id, error=str(exc))
        self.board.set("degraded", reason="ledger_failed", only_from=SERVING)
        message = "the request ledger failed; the request was not run"
        self._refuse(
            msg, Reply(job.reply_topic, error_result(job.request.id or "unknown", ErrorCode.INTERNAL, message))
        )

    def _refuse(self, msg: Inbound, reply: Reply) -> None:
        assert self.bus is not None
        result = reply.result
        self.bus.publish(reply.topic, result.to_json(), correlation_data=msg.correlation_data, ack=msg)
        self.stats.record(result)
        log.info(
            "request_done",
            id=result.id,
            kind=result.kind,
            status=result.status,
            code=result.error.code.value if result.error else None,
            topic=msg.topic,
            reply_topic=reply.topic,
        )

    # -- results (worker thread) -----------------------------------------------------------
    def _deliver(self, job: Job, result: Result) -> None:
        assert self.bus is not None and job.request.id is not None
        rid, busy = job.request.id, result.error is not None and result.error.code == ErrorCode.BUSY
        try:
            self.ledger.settle(rid, job.reply_topic, None if busy else result.to_json())  # stored before it goes out
        except Exception as exc:  # the result still goes out; a copy arriving later may run again
            log.exception("ledger_failed", id=rid, error=str(exc))
            self.board.set("degraded", reason="ledger_failed", only_from=SERVING)
        confirmed = self.bus.publish(
            job.reply_topic,
            result.to_json(),
            correlation_data=job.correlation_data,
            ack=job.origin,
            on_confirmed=lambda: self._confirmed(rid, job.reply_topic),
        )
        self.stats.record(result)
        log.info(
            "request_done",
            id=result.id,
            kind=result.kind,
            mode=result.mode,
            status=result.status,
            code=result.error.code.value if result.error else None,
            prompt_tokens=result.usage.prompt_tokens,
            completion_tokens=result.usage.completion_tokens,
            reasoning_tokens=result.usage.reasoning_tokens,
            queue_ms=result.timing_ms.queue,
            prefill_ms=result.timing_ms.prefill,
            decode_ms=result.timing_ms.decode,
            total_ms=result.timing_ms.total,
            queue_depth=self.worker.depth() if self.worker else 0,
        )
        timeout = self.settings.mqtt.publish_timeout_s
        if not busy and not confirmed.wait(timeout):  # worker thread only (busy results come from the network thread)
            log.warning("result_unconfirmed", id=rid, timeout_s=timeout, connected=self.bus.connected.is_set())

    def _confirmed(self, request_id: str, reply_topic: str) -> None:
        """The broker has the result: copies that arrived meanwhile are acknowledged with the original."""
        assert self.bus is not None
        for copy in self.ledger.confirmed(request_id, reply_topic):
            self.bus.ack(copy)


def run(
    settings: Settings,
    engine_factory: Callable[[Settings], Engine],
    *,
    control: queue.SimpleQueue[Any] | None = None,
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
