"""TLS, client certificates, passwords and the shipped ACL, against a private Mosquitto with a PKI made here.

Failures the broker will repeat on every attempt (an untrusted broker certificate, a refused client
certificate, a bad password) end edged with one clear event and exit code 3; an unreachable
broker is retried with a growing delay.
"""

from __future__ import annotations

import json
import shutil
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from pki import Authority
from proc import RUN_TIMEOUT, Edged, Mosquitto, free_port, password_file, secure_broker_conf, write_config
from pydantic import ValidationError

from edged.bus.client import EdgedClient
from edged.bus.tls import client_context
from edged.settings import Settings

pytestmark = pytest.mark.skipif(
    shutil.which("mosquitto") is None or shutil.which("mosquitto_passwd") is None,
    reason="needs mosquitto and mosquitto_passwd",
)

REPO = Path(__file__).resolve().parent.parent
ACL = REPO / "config" / "mosquitto.acl"
NODE = "hub"  # the node the shipped ACL is written for
BASE = f"edged/{NODE}"
PASSWORDS = {"edged": "edged-secret", "panel": "panel-secret", "outsider": "outsider-secret"}
# Appended to the shipped ACL: a topic the outsider may use to see that its earlier deliveries are done.
SENTINEL = "test/sentinel/outsider"
FATAL_EVENTS = {"mqtt_tls_failed", "mqtt_auth_failed"}
RETRY_EVENTS = {"mqtt_connect_failed", "mqtt_disconnected", "mqtt_connect_refused"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> SimpleNamespace:
    d = tmp_path_factory.mktemp("pki")
    ca, other = Authority(d, "ca"), Authority(d, "other-ca")
    return SimpleNamespace(
        ca=ca,
        other=other,
        broker=ca.issue("broker", server=True),
        edged=ca.issue("edged"),
        panel=ca.issue("panel"),
        outsider=ca.issue("outsider"),
        expired=ca.issue("edged", expired=True),
        rogue=other.issue("edged"),
    )


def _broker(pki: SimpleNamespace, workdir: Path, port: int | None = None) -> Mosquitto:
    """Client certificates required, passwords checked, the shipped ACL in force."""
    acl = workdir / "mosquitto.acl"
    acl.write_text(ACL.read_text() + f"\nuser outsider\ntopic readwrite {SENTINEL}\n")
    conf = secure_broker_conf(
        ca_file=pki.ca.ca_file,
        cert_file=pki.broker.cert,
        key_file=pki.broker.key,
        password_file=password_file(workdir / "passwords", PASSWORDS),
        acl_file=acl,
    )
    return Mosquitto(port or free_port(), workdir, conf)


@pytest.fixture(scope="module")
def secure_broker(pki, tmp_path_factory) -> Iterator[Mosquitto]:
    broker = _broker(pki, tmp_path_factory.mktemp("broker"))
    broker.start()
    yield broker
    broker.stop()


def _edged(
    tmp_path: Path,
    model_dir: Path,
    port: int,
    *,
    ca: Path,
    cert,
    password: str = "edged-secret",
    protocol: str = "5",
    node_id: str = NODE,
    **env: str,
) -> Edged:
    """`edged run` for node hub as user edged; TLS files in the config, the password in a file."""
    (tmp_path / "mqtt-password").write_text(password + "\n")
    tls = f'\n[mqtt.tls]\nenabled = true\nca_file = "{ca}"\n'
    if cert is not None:
        tls += f'cert_file = "{cert.cert}"\nkey_file = "{cert.key}"\n'
    config = write_config(tmp_path / "edged.toml", model_dir, node_id, tls)
    env = {
        "EDGED_MQTT__PORT": str(port),
        "EDGED_MQTT__USERNAME": "edged",
        "EDGED_MQTT__PROTOCOL": protocol,
        "EDGED_MQTT__PASSWORD_FILE": str(tmp_path / "mqtt-password"),
        "EDGED_MQTT__RECONNECT_MIN_S": "1",
        "EDGED_MQTT__RECONNECT_MAX_S": "2",
        **env,
    }
    return Edged(config, tmp_path / "edged.log", env)


def _client(pki: SimpleNamespace, port: int, user: str, **kwargs) -> EdgedClient:
    cert = getattr(pki, user)
    context = client_context(ca_file=pki.ca.ca_file, cert_file=cert.cert, key_file=cert.key)
    return EdgedClient(
        BASE, port=port, username=user, password=PASSWORDS[user], tls=context, timeout=RUN_TIMEOUT, **kwargs
    )


def test_mutual_tls_and_password_under_the_shipped_acl(pki, secure_broker, tiny_model_dir, tmp_path):
    """The right CA, certificate and password: edged serves under config/mosquitto.acl; an outsider gets nothing."""
    edged = _edged(tmp_path, tiny_model_dir, secure_broker.port, ca=pki.ca.ca_file, cert=pki.edged)
    try:
        with _client(pki, secure_broker.port, "panel") as panel:
            panel.subscribe(f"{BASE}/status")
            panel.wait_for(lambda m: m.topic == f"{BASE}/status" and m.json()["state"] == "online")
            assert panel.request("command", {"text": "lights on"})["status"] == "ok"
            assert panel.request("query", {"text": "why is pump 3 vibrating?"})["status"] == "ok"

            with _client(pki, secure_broker.port, "outsider") as outsider:
                # Mosquitto 2.0 accepts the subscriptions but delivers nothing the ACL does not grant.
                for topic in (f"{BASE}/result/#", f"{BASE}/status", f"{BASE}/+", SENTINEL):
                    outsider.subscribe(topic)
                with pytest.raises(PermissionError, match="Not authorized"):
                    outsider.publish(f"{BASE}/command", json.dumps({"id": "intruder", "text": "unlock the door"}))
                # The caller may not impersonate edged either.
                with pytest.raises(PermissionError, match="Not authorized"):
                    panel.publish(f"{BASE}/result/forged", json.dumps({"id": "forged", "status": "ok"}))
                with pytest.raises(PermissionError, match="Not authorized"):
                    panel.publish(f"{BASE}/status", json.dumps({"state": "offline"}))
                # A later request is answered; the refused ones never reached edged or anyone else.
                assert panel.request("command", {"id": "after", "text": "lights off"})["status"] == "ok"
                outsider.publish(SENTINEL, "done")  # delivered after anything the broker queued for it before
                outsider.wait_for(lambda m: m.topic == SENTINEL)
                assert [m.topic for m in outsider.messages()] == [SENTINEL], "the outsider read edged's topics"
            answered = {m.json()["id"] for m in panel.messages() if "/result/" in m.topic}
            assert "after" in answered and "intruder" not in answered and "forged" not in answered
            assert panel.messages(f"{BASE}/status")[-1].json()["state"] == "online"
        assert edged.stop() == 0
    finally:
        if edged.proc.poll() is None:
            edged.stop(signal.SIGKILL)
    events = [e["event"] for e in edged.events()]
    assert "mqtt_connected" in events and not FATAL_EVENTS & set(events)
    assert not any(e.get("level") == "error" and e["event"].startswith("mqtt_") for e in edged.events())


def test_a_shared_group_member_under_the_shipped_acl(pki, secure_broker, tiny_model_dir, tmp_path):
    """In a shared group the ACL still fits: requests through $share, status and stats per instance."""
    edged = _edged(
        tmp_path,
        tiny_model_dir,
        secure_broker.port,
        ca=pki.ca.ca_file,
        cert=pki.edged,
        node_id="gw-1",
        EDGED_BASE_TOPIC=BASE,
        EDGED_MQTT__SHARED_GROUP="edged",
    )
    try:
        with _client(pki, secure_broker.port, "panel") as panel:
            panel.subscribe(f"{BASE}/status/+")
            panel.wait_for(lambda m: m.topic == f"{BASE}/status/gw-1" and m.json()["state"] == "online")
            assert panel.request("command", {"text": "lights on"})["status"] == "ok"
        assert edged.stop() == 0
    finally:
        if edged.proc.poll() is None:
            edged.stop(signal.SIGKILL)
    assert not [e for e in edged.events() if e.get("level") == "error"]


REFUSALS = {
    # case: (CA edged trusts, its client certificate, password, MQTT version) -> (event, words in its reason)
    "wrong_ca": ("other", "edged", "edged-secret", "5", "mqtt_tls_failed", "broker's certificate is not trusted"),
    "expired_client_cert": ("ca", "expired", "edged-secret", "5", "mqtt_tls_failed", "certificate has expired"),
    "client_cert_from_another_ca": ("ca", "rogue", "edged-secret", "5", "mqtt_tls_failed", "does not trust the CA"),
    "no_client_cert": ("ca", None, "edged-secret", "5", "mqtt_tls_failed", "requires a client certificate"),
    "bad_password": ("ca", "edged", "wrong", "5", "mqtt_auth_failed", "Not authorized"),
    "bad_password_mqtt311": ("ca", "edged", "wrong", "3.1.1", "mqtt_auth_failed", "Not authorized"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_credentials_stop_with_one_event_and_exit_3(case, pki, secure_broker, tiny_model_dir, tmp_path):
    """Retrying cannot fix these: one error event naming the reason, no second attempt, exit code 3."""
    ca, cert, password, protocol, event, words = REFUSALS[case]
    seen = len(secure_broker.lines)
    edged = _edged(
        tmp_path,
        tiny_model_dir,
        secure_broker.port,
        ca=getattr(pki, ca).ca_file,
        cert=getattr(pki, cert) if cert else None,
        password=password,
        protocol=protocol,
    )
    try:
        code = edged.proc.wait(RUN_TIMEOUT)
    finally:
        if edged.proc.poll() is None:
            edged.stop(signal.SIGKILL)
    events = edged.events()
    fatal = [e for e in events if e["event"] in FATAL_EVENTS]
    assert code == 3, events[-5:]
    assert len(fatal) == 1 and fatal[0]["event"] == event and fatal[0]["level"] == "error", fatal
    assert words in fatal[0]["reason"] and fatal[0]["port"] == secure_broker.port
    assert [e for e in events if e["event"] in RETRY_EVENTS and e.get("attempt")] == [], "no second attempt"
    assert not [e for e in events if e["event"] == "mqtt_connecting"][1:]
    assert "online" not in [e["event"] for e in events]
    # The broker's side: one connection (Mosquitto logs one or two lines for it), not a stream of them.
    connections = lambda: [line for line in secure_broker.lines[seen:] if "connection from 127.0.0.1" in line]  # noqa: E731
    secure_broker.wait_logged(connections, 10, "the broker's log line for the attempt")
    assert len(connections()) <= 2, connections()


def test_unreachable_broker_is_retried_with_backoff_then_served(pki, tiny_model_dir, tmp_path):
    """Connection refused is transient: attempts 1, 2, 3 ... with the delay doubling to its cap; then edged connects."""
    port = free_port()
    edged = _edged(tmp_path, tiny_model_dir, port, ca=pki.ca.ca_file, cert=pki.edged)
    broker = _broker(pki, tmp_path, port)
    try:

        def failures() -> list[dict]:
            found = [e for e in edged.events() if e["event"] == "mqtt_connect_failed"]
            return found if len(found) >= 3 else []

        failed = edged.wait_event(failures, what="three failed attempts")
        assert [(e["attempt"], e["retry_in_s"]) for e in failed[:3]] == [(1, 1), (2, 2), (3, 2)]
        assert all("ConnectionRefusedError" in e["error"] and e["level"] == "warning" for e in failed)
        broker.start()
        with _client(pki, port, "panel") as panel:
            panel.subscribe(f"{BASE}/status")
            panel.wait_for(lambda m: m.topic == f"{BASE}/status" and m.json()["state"] == "online")
        assert edged.stop() == 0
    finally:
        if edged.proc.poll() is None:
            edged.stop(signal.SIGKILL)
        broker.stop()
    assert not FATAL_EVENTS & {e["event"] for e in edged.events()}


# -- settings ------------------------------------------------------------------------------------


def test_tls_settings_are_checked_up_front(pki, tmp_path):
    """Certificate and key go together, files must be readable and valid, and TLS files without TLS are refused."""
    ok = Settings(
        mqtt={
            "tls": {
                "enabled": True,
                "ca_file": str(pki.ca.ca_file),
                "cert_file": str(pki.edged.cert),
                "key_file": str(pki.edged.key),
                "min_version": "1.3",
            }
        }
    )
    context = ok.mqtt.tls.context()
    assert (
        context.minimum_version == ssl.TLSVersion.TLSv1_3
        and context.verify_mode == ssl.CERT_REQUIRED
        and context.check_hostname
    )
    assert Settings(mqtt={"tls": {"enabled": True}}).mqtt.tls.context().minimum_version == ssl.TLSVersion.TLSv1_2
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    bad = {
        "set cert_file and key_file together": {"enabled": True, "cert_file": str(pki.edged.cert)},
        "cannot read ca_file": {"enabled": True, "ca_file": str(tmp_path / "missing.pem")},
        "cannot use the TLS files": {"enabled": True, "ca_file": str(not_pem)},
        "enabled = false": {"ca_file": str(pki.ca.ca_file)},
        "Input should be '1.2' or '1.3'": {"enabled": True, "min_version": "1.1"},
    }
    for message, tls in bad.items():
        with pytest.raises(ValidationError, match=message):
            Settings(mqtt={"tls": tls})
    # The key must belong to the certificate.
    with pytest.raises(ValidationError, match="cannot use the TLS files"):
        Settings(mqtt={"tls": {"enabled": True, "cert_file": str(pki.edged.cert), "key_file": str(pki.panel.key)}})
    # An encrypted key is refused at once (OpenSSL would ask for its passphrase on the terminal).
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pki.edged.key.read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    with pytest.raises(ValidationError, match="the key file is encrypted"):
        Settings(mqtt={"tls": {"enabled": True, "cert_file": str(pki.edged.cert), "key_file": str(encrypted)}})


def test_config_check_shows_tls_and_never_the_password(pki, tmp_path):
    """`edged config check` echoes the TLS files and version; the password stays masked."""
    config = tmp_path / "edged.toml"
    config.write_text(
        f'[mqtt]\nusername = "edged"\npassword = "hunter2"\nport = 8883\n'
        f'[mqtt.tls]\nenabled = true\nca_file = "{pki.ca.ca_file}"\n'
        f'cert_file = "{pki.edged.cert}"\nkey_file = "{pki.edged.key}"\n'
    )
    out = subprocess.run(
        [sys.executable, "-m", "edged.cli", "config", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert out.returncode == 0, out.stderr
    tls = json.loads(out.stdout)["mqtt"]["tls"]
    assert tls == {
        "enabled": True,
        "ca_file": str(pki.ca.ca_file),
        "cert_file": str(pki.edged.cert),
        "key_file": str(pki.edged.key),
        "min_version": "1.2",
    }
    assert "hunter2" not in out.stdout


def test_systemd_does_not_restart_after_a_refusal():
    """Exit code 3 (credentials or certificate refused) is not restarted, like 2 (configuration)."""
    from edged.app import EXIT_BROKER_REFUSED
    from edged.ops.service_files import systemd_unit

    lines = systemd_unit().splitlines()
    assert f"RestartPreventExitStatus=2 {EXIT_BROKER_REFUSED}" in lines


def test_which_tls_errors_are_final():
    """Certificate and version refusals are final; an EOF, a reset or a refused connection may pass."""
    from edged.bus.tls import refusal

    def alert(reason: str) -> ssl.SSLError:
        exc = ssl.SSLError(1, f"[SSL: {reason}] ...")
        exc.reason = reason
        return exc

    assert "not trusted" in refusal(ssl.SSLCertVerificationError(1, "certificate verify failed"))
    assert "expired" in refusal(alert("SSLV3_ALERT_CERTIFICATE_EXPIRED"))
    assert "min_version" in refusal(alert("TLSV1_ALERT_PROTOCOL_VERSION"))
    for transient in (
        ssl.SSLEOFError(8, "EOF"),
        ssl.SSLWantReadError(2, "want read"),
        alert("UNEXPECTED_EOF_WHILE_READING"),
        ConnectionResetError(104, "reset"),
        ConnectionRefusedError(111, "refused"),
        TimeoutError(),
    ):
        assert refusal(transient) is None, transient
