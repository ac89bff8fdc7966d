"""The MQTT transport: the only module that imports paho. Knows topics and bytes, not models.

Requests arrive as :class:`Inbound` and are acknowledged to the broker only when the caller
says so (``publish(..., ack=inbound)`` acknowledges once the broker has confirmed that
publish), so a request whose answer never reached the broker is delivered again.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ParamSpec

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.client import ConnectFlags, DisconnectFlags
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edged.bus.tcp import no_delay
from edged.bus.tls import refusal, report_errors

log = structlog.get_logger("edged.bus")
_P = ParamSpec("_P")

# CONNACK reason codes after which retrying cannot help: client id not valid, bad user name or password,
# not authorised, banned, bad authentication method (paho maps MQTT 3.1.1's codes 2, 4 and 5 to 133, 134, 135).
AUTH_FAILURES = {133, 134, 135, 138, 140}


@dataclass(frozen=True)
class BusConfig:
    host: str
    port: int
    client_id: str
    mqtt5: bool = True
    username: str | None = None
    password: str | None = None
    keepalive_s: int = 30
    session_expiry_s: int = 86400
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    receive_maximum: int | None = None  # MQTT 5: requests in flight to edged at once (back-pressure)
    tls: ssl.SSLContext | None = None  # None: plain TCP


@dataclass(frozen=True)
class Inbound:
    """One received message, with what the reply needs."""

    topic: str
    payload: bytes
    retained: bool
    dup: bool
    response_topic: str | None
    correlation_data: bytes | None
    expiry_s: int | None
    received_at: float  # time.monotonic()
    mid: int
    qos: int
    user_properties: tuple[tuple[str, str], ...] = ()  # MQTT 5 user properties, in order

    def user_property(self, name: str) -> str | None:
        """The last value of user property ``name``, if the sender set it."""
        values = [v for k, v in self.user_properties if k == name]
        return values[-1] if values else None


@dataclass
class _Pending:
    ack: Inbound | None
    then: Callable[[], None] | None = None  # runs on confirmation, before the acknowledgement
    done: threading.Event = field(default_factory=threading.Event)


class Bus:
    """A persistent-session MQTT client: subscribe on every connect, manual acknowledgement."""

    def __init__(
        self,
        config: BusConfig,
        *,
        on_message: Callable[[Inbound], None],
        on_ready: Callable[[], None] = lambda: None,
        will: tuple[str, bytes] | None = None,
        on_fatal: Callable[[str], None] = lambda _reason: None,
        on_waiting: Callable[[int, float], None] = lambda _attempt, _delay: None,
    ):
        """``on_waiting(attempt, retry_in_s)`` after each failed attempt to reach the broker."""
        self._config = config
        self._on_fatal = on_fatal
        self.failure: str | None = None  # why the broker will never accept edged as configured; no more retries
        self._stopped = False
        self._session_up = False  # a successful CONNACK on the current connection
        self._attempt = 0  # failed connection attempts since the last successful CONNACK
        self._delay: int | None = None  # paho's current reconnect wait, mirrored for the logs
        self._on_waiting = on_waiting
        self._on_message = on_message
        self._on_ready = on_ready
        self._subscriptions: dict[str, bool] = {}  # topic -> deliver retained messages on subscribe
        self._connect_mid: int | None = None
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._early: set[int] = set()  # mids confirmed before publish() returned
        self._unacked: set[int] = set()  # received QoS 1 messages not yet acknowledged
        self.connected = threading.Event()
        self.reconnects = 0
        self._client = self._make_client(will)

    def _make_client(self, will: tuple[str, bytes] | None) -> mqtt.Client:
        cfg = self._config
        protocol = MQTTProtocolVersion.MQTTv5 if cfg.mqtt5 else MQTTProtocolVersion.MQTTv311
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            protocol=protocol,
            clean_session=None if cfg.mqtt5 else False,
            manual_ack=True,
        )
        client.enable_logger(logging.getLogger("paho"))
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password)
        if cfg.tls is not None:
            report_errors(cfg.tls, self._guard(self._handle_tls_error))
            client.tls_set_context(cfg.tls)
        if will is not None:
            client.will_set(will[0], will[1], qos=1, retain=True)
        client.reconnect_delay_set(int(max(1, cfg.reconnect_min_s)), int(max(1, cfg.reconnect_max_s)))
        client.on_connect = self._guard(self._handle_connect)
        client.on_connect_fail = self._guard(self._handle_connect_fail)
        client.on_disconnect = self._guard(self._handle_disconnect)
        client.on_subscribe = self._guard(self._handle_subscribe)
        client.on_message = self._guard(self._handle_message)
        client.on_publish = self._guard(self._handle_publish)
        client.on_socket_open = no_delay
        return client

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, subscriptions: list[str], *, watch: Sequence[str] = ()) -> None:
        """Connect in the background; paho retries with backoff until the broker answers.

        ``subscriptions`` are request topics (retained messages there are not wanted);
        ``watch`` topics deliver their retained message on subscribe (device states).
        """
        self._subscriptions = {**dict.fromkeys(subscriptions, False), **dict.fromkeys(watch, True)}
        cfg = self._config
        props = None
        if cfg.mqtt5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = cfg.session_expiry_s
            if cfg.receive_maximum is not None:
                props.ReceiveMaximum = cfg.receive_maximum
        log.info(
            "mqtt_connecting",
            host=cfg.host,
            port=cfg.port,
            client_id=cfg.client_id,
            mqtt5=cfg.mqtt5,
            tls=cfg.tls is not None,
        )
        if cfg.password is not None and cfg.tls is None and not _loopback(cfg.host):
            log.warning(
                "mqtt_password_unencrypted",
                host=cfg.host,
                hint="enable mqtt.tls: the password crosses the network in clear",
            )
        self._client.connect_async(
            cfg.host,
            cfg.port,
            keepalive=cfg.keepalive_s,
            clean_start=False if cfg.mqtt5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=props,
        )
        self._client.loop_start()

    def stop(self) -> None:
        """Disconnect cleanly (no last will) and stop the network thread."""
        self._stopped = True
        self._client.disconnect()
        self._client.loop_stop()
        self.connected.clear()

    # -- publishing ------------------------------------------------------------------------
    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        correlation_data: bytes | None = None,
        ack: Inbound | None = None,
        on_confirmed: Callable[[], None] | None = None,
    ) -> threading.Event:
        """Publish at QoS 1; once the broker confirms, call ``on_confirmed``, then acknowledge ``ack``.
        Returns the confirmation event.

        While disconnected the message waits in paho's session and goes out on reconnect.
        """
        props = None
        if self._config.mqtt5 and correlation_data is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = correlation_data
        info = self._client.publish(topic, payload, qos=1, retain=retain, properties=props)
        pending = _Pending(ack=ack, then=on_confirmed)
        with self._lock:
            confirmed = info.mid in self._early
            self._early.discard(info.mid)
            if not confirmed:
                self._pending[info.mid] = pending
        if confirmed:
            self._complete(pending)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log.warning("mqtt_publish_failed", topic=topic, rc=info.rc.name)
        return pending.done

    def unconfirmed(self) -> int:
        with self._lock:
            return len(self._pending)

    def wait_confirmed(self, timeout: float) -> bool:
        """Wait until every publish so far has been confirmed by the broker."""
        with self._lock:
            events = [p.done for p in self._pending.values()]
        deadline = time.monotonic() + timeout
        return all(e.wait(max(0.0, deadline - time.monotonic())) for e in events)

    def ack(self, msg: Inbound) -> None:
        """Acknowledge a received message: the broker forgets it."""
        if msg.qos > 0:
            with self._lock:
                self._unacked.discard(msg.mid)
            self._client.ack(msg.mid, msg.qos)

    def _complete(self, pending: _Pending) -> None:
        try:
            if pending.then is not None:
                pending.then()
        finally:
            if pending.ack is not None:
                self.ack(pending.ack)
            pending.done.set()

    # -- paho callbacks (network thread) ---------------------------------------------------
    def _guard(self, handler: Callable[_P, None]) -> Callable[_P, None]:
        """A failing handler logs and returns: it never takes the network thread down."""

        def wrapped(*args: _P.args, **kwargs: _P.kwargs) -> None:
            try:
                handler(*args, **kwargs)
            except Exception:
                log.exception("mqtt_callback_failed", callback=handler.__name__)

        return wrapped

    # -- connection failures: fatal ones stop the retries, transient ones back off ------------
    def _fatal(self, event: str, reason: str, **fields: object) -> None:
        """The broker will refuse edged the same way on every attempt: say why once, stop retrying, tell the owner."""
        if self.failure is not None:
            return
        self.failure = reason
        log.error(event, reason=reason, host=self._config.host, port=self._config.port, **fields)
        self._client.disconnect()  # paho's loop ends instead of reconnecting
        self._on_fatal(reason)

    def _retry_in(self) -> int:
        """The wait paho makes before its next attempt (doubling from reconnect_min_s up to reconnect_max_s)."""
        lo, hi = int(max(1, self._config.reconnect_min_s)), int(max(1, self._config.reconnect_max_s))
        self._delay = lo if self._delay is None else min(self._delay * 2, hi)
        return self._delay

    def _handle_tls_error(self, exc: ssl.SSLError) -> None:
        """Every TLS error on edged's socket (handshake or read), before paho sees it."""
        reason = refusal(exc)
        if reason is not None:
            self._fatal("mqtt_tls_failed", reason, error=str(exc), tls_reason=getattr(exc, "reason", None))

    def _handle_connect_fail(self, _client: mqtt.Client, _userdata: object) -> None:
        """paho could not open the connection (TCP or TLS); it runs this inside its ``except OSError`` block."""
        if self.failure is not None or self._stopped:
            return
        exc = sys.exc_info()[1]
        reason = refusal(exc) if exc is not None else None
        if reason is not None:
            self._fatal("mqtt_tls_failed", reason, error=str(exc))
            return
        self._attempt += 1
        delay = self._retry_in()
        log.warning("mqtt_connect_failed", error=repr(exc), attempt=self._attempt, retry_in_s=delay)
        self._on_waiting(self._attempt, delay)

    def _handle_connect(
        self, client: mqtt.Client, _userdata: object, flags: ConnectFlags, reason: ReasonCode, _props: Properties | None
    ) -> None:
        if reason.is_failure:
            if reason.value in AUTH_FAILURES:
                self._fatal("mqtt_auth_failed", str(reason), code=reason.value, username=self._config.username)
            else:
                log.error("mqtt_connect_refused", reason=str(reason), code=reason.value)
            return
        self._session_up, self._attempt, self._delay = True, 0, None
        log.info("mqtt_connected", session_present=bool(flags.session_present), reconnects=self.reconnects)
        if not flags.session_present:
            with self._lock:
                self._unacked.clear()  # the broker has forgotten them: they will not be redelivered
        self._connect_mid = self._subscribe(self._subscriptions)

    def watch(self, topics: list[str]) -> None:
        """Add topics whose retained messages are wanted; subscribed now if connected, and on every reconnect."""
        new = {t: True for t in topics if t not in self._subscriptions}
        self._subscriptions.update(new)
        if new and self._client.is_connected():
            self._subscribe(new)

    def _subscribe(self, topics: dict[str, bool]) -> int | None:
        if not topics:
            return None
        if not self._config.mqtt5:
            return self._client.subscribe([(t, 1) for t in topics])[1]
        keep, skip = SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE, SubscribeOptions.RETAIN_DO_NOT_SEND
        return self._client.subscribe(
            [
                (
                    t,
                    SubscribeOptions(
                        qos=1, noLocal=not t.startswith("$share/"), retainHandling=keep if retained else skip
                    ),
                )
                for t, retained in topics.items()
            ]  # MQTT 5 forbids No Local on a shared subscription
        )[1]

    def _handle_subscribe(
        self, _client: mqtt.Client, _userdata: object, mid: int, reasons: list[ReasonCode], _props: Properties | None
    ) -> None:
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            log.error("mqtt_subscribe_refused", topics=list(self._subscriptions), reasons=failed)
            return
        log.info("mqtt_subscribed", topics=list(self._subscriptions))
        if mid == self._connect_mid:
            self.connected.set()
            self._on_ready()

    def _handle_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _flags: DisconnectFlags,
        reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        if was_connected:
            self.reconnects += 1
        if self.failure is not None or self._stopped:
            log.info("mqtt_disconnected", reason=str(reason))
            return
        if not self._session_up:
            self._attempt += 1  # the connection closed before a successful CONNACK: a failed attempt
        self._session_up = False
        log.warning("mqtt_disconnected", reason=str(reason), attempt=self._attempt, retry_in_s=self._retry_in())

    def _handle_publish(
        self, _client: mqtt.Client, _userdata: object, mid: int, _reason: ReasonCode, _props: Properties
    ) -> None:
        with self._lock:
            pending = self._pending.pop(mid, None)
            if pending is None:
                self._early.add(mid)
        if pending is not None:
            self._complete(pending)

    def _handle_message(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None) if props else None
        correlation = getattr(props, "CorrelationData", None) if props else None
        expiry = getattr(props, "MessageExpiryInterval", None) if props else None
        user_properties = tuple(getattr(props, "UserProperty", None) or ()) if props else ()
        inbound = Inbound(
            topic=msg.topic,
            payload=bytes(msg.payload),
            retained=bool(msg.retain),
            dup=bool(msg.dup),
            response_topic=response_topic,
            correlation_data=bytes(correlation) if correlation is not None else None,
            expiry_s=expiry,
            received_at=time.monotonic(),
            mid=msg.mid,
            qos=msg.qos,
            user_properties=tuple((str(k), str(v)) for k, v in user_properties),
        )
        if inbound.qos > 0:
            with self._lock:
                if inbound.dup and inbound.mid in self._unacked:
                    log.info("mqtt_redelivery_ignored", topic=inbound.topic, mid=inbound.mid)
                    return  # still being handled: its acknowledgement covers this copy
                self._unacked.add(inbound.mid)
        self._on_message(inbound)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
