"""Service files: the systemd unit passes systemd-analyze, launchd plists parse, both start the real CLI;
credentials."""

from __future__ import annotations

import os
import plistlib
import shlex
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from proc import RUN_TIMEOUT, Edged, Mosquitto, free_port, write_config

from edged.bus.client import EdgedClient
from edged.cli import _parser, main
from edged.ops import service_files as sf
from edged.settings import MqttSettings

REPO = Path(__file__).resolve().parent.parent
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None and os.environ.get("CI") != "true",
    reason="systemd-analyze is not installed (Debian: apt-get install systemd); .ci/run installs it and CI runs this",
)


def _unit_entries(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for each assignment; keys may repeat in unit files."""
    section, out = "", []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out.append((section, key, value))
    return out


def _installed_unit(tmp_path: Path) -> tuple[Path, Path]:
    config = tmp_path / "edged.toml"
    assert main(["service", "install", "--systemd", "--dest", str(tmp_path / "units"), "--config", str(config)]) == 0
    return tmp_path / "units" / sf.UNIT_NAME, config


def _check_starts_the_real_cli(argv: list[str], config: Path | str) -> None:
    assert os.access(argv[0], os.X_OK) and Path(argv[0]).parent == Path(sys.executable).parent
    args = _parser().parse_args(argv[1:])
    assert (args.command, str(args.config)) == ("run", str(config))


def test_repository_files_are_the_rendered_defaults():
    """systemd/ and launchd/ hold exactly what the code renders with the default paths (one source)."""
    for name, content in sf.samples().items():
        assert (REPO / name).read_bytes() == content, f"{name} is stale: run `make service-files`"


def test_systemd_unit_is_a_hardened_notify_service(tmp_path):
    """Type=notify with a watchdog, restart with a start limit, a dynamic user, credentials, hardening."""
    unit, config = _installed_unit(tmp_path)
    entries = _unit_entries(unit.read_text())
    values = {(s, k): v for s, k, v in entries}
    assert values[("Service", "Type")] == "notify" and int(values[("Service", "WatchdogSec")]) > 0
    assert values[("Service", "Restart")] == "on-failure" and values[("Unit", "StartLimitBurst")] == "5"
    assert values[("Service", "DynamicUser")] == "yes" and values[("Service", "StateDirectory")] == "edged"
    assert values[("Service", "LoadCredential")].startswith("mqtt-password:")
    for key, value in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
    ]:
        assert values[("Service", key)] == value
    assert values[("Service", "RestrictAddressFamilies")] == "AF_UNIX AF_INET AF_INET6"
    assert "MemoryMax" in (unit.parent / "edged.service.d/override.conf").read_text()
    _check_starts_the_real_cli(shlex.split(values[("Service", "ExecStart")]), config)


def test_protect_home_is_read_only_when_edged_lives_in_a_home():
    """ProtectHome=yes would hide a venv under /home; the unit then only makes home read-only."""
    unit = sf.systemd_unit(["/home/pi/venv/bin/edged"], "/etc/edged/edged.toml")
    assert "ProtectHome=read-only" in unit and "ExecStart=/home/pi/venv/bin/edged run" in unit
    assert 'ExecStart="/opt/my edged/edged" run --config "/etc/100%%/e.toml"' in sf.systemd_unit(
        ["/opt/my edged/edged"], "/etc/100%/e.toml"
    )


@needs_analyze
def test_systemd_analyze_verify_and_security(tmp_path):
    """`systemd-analyze verify` accepts the unit and its drop-in without a warning; exposure stays low."""
    assert ANALYZE, "CI must have systemd-analyze: .ci/run installs the systemd package"
    unit, _ = _installed_unit(tmp_path)
    verify = subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    warnings = [line for line in verify.stderr.splitlines() if "edged" in line]
    assert verify.returncode == 0 and not warnings, verify.stderr
    security = subprocess.run(
        [ANALYZE, "security", "--offline=yes", "--threshold=20", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert security.returncode == 0, security.stdout[-2000:] + security.stderr


def test_launchd_plists_start_the_real_cli(tmp_path):
    """Daemon and agent plists parse, keep edged alive, log to files, and start `edged run --config ...`."""
    home = tmp_path / "home"
    for scope, extra in [("daemon", ["--user", "_edged"]), ("agent", ["--agent"])]:
        dest = tmp_path / scope
        config = tmp_path / f"{scope}.toml"
        assert main(["service", "install", "--launchd", *extra, "--dest", str(dest), "--config", str(config)]) == 0
        job = plistlib.loads((dest / f"{sf.LAUNCHD_LABEL}.plist").read_bytes())
        assert job["Label"] == sf.LAUNCHD_LABEL and job["RunAtLoad"] is True
        assert job["KeepAlive"] == {"SuccessfulExit": False} and job["ThrottleInterval"] >= 10
        assert job["StandardOutPath"] == job["StandardErrorPath"] and job["StandardOutPath"].endswith("edged.log")
        assert Path(job["WorkingDirectory"]).is_absolute() and job["EnvironmentVariables"]["HF_HUB_OFFLINE"] == "1"
        assert job.get("UserName") == ("_edged" if scope == "daemon" else None)
        _check_starts_the_real_cli(job["ProgramArguments"], config)
    agent = plistlib.loads(sf.launchd_plist("agent", home=home))
    assert agent["StandardOutPath"] == str(home / "Library/Logs/edged/edged.log")


def test_password_from_the_credentials_directory(tmp_path):
    """Without password/password_file, $CREDENTIALS_DIRECTORY/mqtt-password is read; an empty file means none."""
    (tmp_path / "mqtt-password").write_text("s3cret\n")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert MqttSettings().resolved_password(env) == "s3cret"
    assert MqttSettings(password="explicit").resolved_password(env) == "explicit"
    assert MqttSettings().resolved_password({}) is None
    (tmp_path / "mqtt-password").write_text("")
    assert MqttSettings().resolved_password(env) is None


def test_edged_run_logs_in_with_the_credential_and_never_logs_it(tiny_model_dir, tmp_path):
    """A broker that needs a password: edged reads it from $CREDENTIALS_DIRECTORY and comes online;
    not a log line has it."""
    secret = f"pw-{uuid.uuid4().hex}"
    passwords = tmp_path / "passwd"
    passwords.write_text(f"edged:{secret}\nprobe:probe\n")
    subprocess.run(["mosquitto_passwd", "-U", str(passwords)], check=True, timeout=30)
    broker = Mosquitto(free_port(), tmp_path, f"allow_anonymous false\npassword_file {passwords}\nuser root\n")
    broker.start()
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text(secret + "\n")
    node_id = f"cr-{uuid.uuid4().hex[:8]}"
    config = write_config(tmp_path / "edged.toml", tiny_model_dir, node_id)
    text = config.read_text().replace("[mqtt]\n", f'[mqtt]\nport = {broker.port}\nusername = "edged"\n')
    config.write_text(text.replace('format = "json"', 'format = "json"\nlevel = "debug"'))  # paho's packets too
    edged = Edged(config, tmp_path / "edged.log", env={"CREDENTIALS_DIRECTORY": str(creds)})
    try:
        with EdgedClient(
            f"edged/{node_id}", port=broker.port, timeout=RUN_TIMEOUT, username="probe", password="probe"
        ) as c:
            c.subscribe(f"edged/{node_id}/status")
            c.wait_for(lambda m: m.json()["state"] == "online")
        assert edged.stop(signal.SIGTERM) == 0
    finally:
        if edged.proc.poll() is None:
            edged.stop(signal.SIGKILL)
        broker.stop()
    log = edged.log_path.read_text()
    assert "mqtt_connected" in log and secret not in log
    check = subprocess.run(
        [sys.executable, "-m", "edged.cli", "config", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env={**os.environ, "EDGED_MQTT__PASSWORD": secret},
    )
    assert check.returncode == 0 and secret not in check.stdout + check.stderr and "**********" in check.stdout
