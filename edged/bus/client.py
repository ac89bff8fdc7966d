"""A small MQTT client for callers of edged: send a request, wait for its result.

Used by ``edged demo``, the benchmarks and the tests; a script on the bus can use it too.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edged.bus.tcp import no_delay


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retained: bool
    correlation_data: bytes | None
    received_at: float  # time.monotonic()

    def json(self) -> Any:
        return json.loads(self.payload)


class EdgedClient:
    """Connects with a clean session, records every message on its subscriptions."""

    def __init__(
        self,
        base: str,
        *,
        host: str = "127.0.0.1",
        port: int = 1883,
        mqtt5: bool = True,
        timeout: float = 10,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        session_expiry_s: int = 0,
    ):
        """``session_expiry_s`` > 0 (MQTT 5): a persistent session, so results published while the
        connection is down (a broker restart) are kept by the broker and delivered on reconnect."""
        self.base = base
        self.timeout = timeout
        self._mqtt5 = mqtt5
        self._received: list[Received] = []
        self._cond = threading.Condition()
        self._acks: dict[int, threading.Event] = {}
        self._refused: dict[int, str] = {}  # mid -> the broker's reason (MQTT 5 PUBACK, SUBACK), e.g. "Not authorized"
        self._connected = threading.Event()
        self._results_subscribed = False
        protocol = MQTTProtocolVersion.MQTTv5 if mqtt5 else MQTTProtocolVersion.MQTTv311
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"edged-client-{uuid.uuid4().hex[:8]}", protocol=protocol
        )
        if username is not None:
            self._client.username_pw_set(username, password)
        if tls is not None:
            self._client.tls_set_context(tls)
        self._client.on_connect = lambda *_: self._connected.set()
        self._client.on_socket_open = no_delay
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda _c, _u, mid, reasons, _p: self._ack(mid, reasons)
        self._client.on_publish = lambda _c, _u, mid, reason, _p: self._ack(mid, [reason])
        props = None
        if mqtt5 and session_expiry_s > 0:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = session_expiry_s
        if props is None:
            self._client.connect(host, port, keepalive=30)
        else:  # the client id is new, so there is nothing old to resume; a reconnect resumes this session
            self._client.connect(host, port, keepalive=30, clean_start=False, properties=props)
        self._client.loop_start()
        if not self._connected.wait(timeout):
            raise TimeoutError(f"no CONNACK from {host}:{port}")

    def __enter__(self) -> EdgedClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        with self._cond:
            rc, mid = self._client.subscribe(topic, qos=1)
            if mid is None:
                raise ConnectionError(f"cannot subscribe to {topic}: {rc}")
            self._acks[mid] = done
        if not done.wait(self.timeout):
            raise TimeoutError(f"no SUBACK for {topic}")
        self._raise_refused(mid, f"subscription to {topic}")

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        retain: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        expiry_s: int | None = None,
        user_properties: list[tuple[str, str]] | None = None,
    ) -> None:
        props = None
        if self._mqtt5 and (response_topic or correlation_data or expiry_s is not None or user_properties):
            props = Properties(PacketTypes.PUBLISH)
            if response_topic:
                props.ResponseTopic = response_topic
            if correlation_data:
                props.CorrelationData = correlation_data
            if expiry_s is not None:
                props.MessageExpiryInterval = expiry_s
            for name, value in user_properties or ():
                props.UserProperty = (name, value)  # paho appends: several are allowed
        info = self._client.publish(topic, payload, qos=1, retain=retain, properties=props)
        info.wait_for_publish(self.timeout)
        self._raise_refused(info.mid, f"publish on {topic}")

    def wait_for(self, match: Callable[[Received], bool], timeout: float | None = None, *, after: int = 0) -> Received:
        """The first message so far (or to come) that ``match`` accepts, from the ``after``-th received on."""
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._cond:
            while True:
                for msg in self._received[after:]:
                    if match(msg):
                        return msg
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    raise TimeoutError("no matching message before the timeout")

    def nth(self, n: int, timeout: float | None = None) -> Received:
        """The n-th message received (0-based), waiting for it if need be."""
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._cond:
            while len(self._received) <= n:
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    raise TimeoutError(f"fewer than {n + 1} messages before the timeout")
            return self._received[n]

    def count(self) -> int:
        """How many messages have been received so far (for ``wait_for(after=...)``)."""
        with self._cond:
            return len(self._received)

    def messages(self, topic: str | None = None) -> list[Received]:
        with self._cond:
            return [m for m in self._received if topic is None or m.topic == topic]

    def request(self, kind: str, body: Mapping[str, object], *, timeout: float | None = None) -> dict[str, Any]:
        """Publish a request on ``{base}/{kind}`` and return its result from ``{base}/result/{id}``."""
        body = {"id": uuid.uuid4().hex[:12], **body}
        topic = f"{self.base}/result/{body['id']}"
        if not self._results_subscribed:
            self.subscribe(f"{self.base}/result/+")
            self._results_subscribed = True
        self.publish(f"{self.base}/{kind}", json.dumps(body))
        return self.wait_for(lambda m: m.topic == topic, timeout).json()

    def _raise_refused(self, mid: int, what: str) -> None:
        with self._cond:
            reason = self._refused.pop(mid, None)
        if reason is not None:
            raise PermissionError(f"the broker refused the {what}: {reason}")

    def _ack(self, mid: int, reasons: list[ReasonCode]) -> None:
        failed = [str(r) for r in reasons if r.is_failure]
        with self._cond:
            if failed:
                self._refused[mid] = ", ".join(failed)
            event = self._acks.pop(mid, None)
        if event:
            event.set()

    def _on_message(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        correlation = getattr(props, "CorrelationData", None) if props else None
        received = Received(msg.topic, bytes(msg.payload), bool(msg.retain), correlation, time.monotonic())
        with self._cond:
            self._received.append(received)
            self._cond.notify_all()
