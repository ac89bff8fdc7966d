"""Service definitions: a systemd unit (+ a sample drop-in) and launchd plists, with this installation's paths.

The files under ``systemd/`` and ``launchd/`` in the repository are these renderings with the
default paths (a test keeps them equal); ``edged service install`` writes them with the paths
of the running installation.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import sys
from pathlib import Path
from typing import Any, Literal

UNIT_NAME = "edged.service"
LAUNCHD_LABEL = "local.edged"
DEFAULT_EXEC = "/opt/edged/venv/bin/edged"
DEFAULT_CONFIG = "/etc/edged/edged.toml"
HOME_DIRS = ("/home", "/root", "/run/user")  # hidden from the service by ProtectHome=yes

LaunchdScope = Literal["daemon", "agent"]

SYSTEMD_UNIT = """\
# edged as a systemd service. Install with `edged service install --systemd` (writes this file
# with the paths of your installation), then: systemctl daemon-reload && systemctl enable --now edged
# Local changes belong in a drop-in (systemctl edit edged); see edged.service.d/override.conf.

[Unit]
Description=edged local-LLM daemon (MQTT requests in, JSON results out)
After=network-online.target mosquitto.service
Wants=network-online.target
# Restart on failure, but stop trying after 5 failed starts in 10 minutes (then: systemctl reset-failed edged).
StartLimitIntervalSec=600
StartLimitBurst=5

[Service]
# READY=1 once the model is loaded and the MQTT subscriptions are in place; STATUS= while loading.
Type=notify
NotifyAccess=main
ExecStart={exec_start}
# SIGHUP: re-read the configuration; an invalid one is refused and the running one kept.
ExecReload=/bin/kill -HUP $MAINPID
# Loading a large model from a slow disk can take minutes (systemctl status edged shows progress).
TimeoutStartSec=600
# SIGTERM: finish the request in progress (shutdown_grace_s, 30 s by default), publish offline, exit 0.
TimeoutStopSec=60
# WATCHDOG=1 stops when a request has produced no token for health.stuck_after_s (300 s by default);
# systemd then kills edged (SIGABRT) after this much more silence and Restart= brings it back.
WatchdogSec=60
Restart=on-failure
RestartSec=5
# Exit code 2 is a configuration error, 3 the broker refusing edged's password or certificate
# (or edged not trusting the broker's): restarting cannot fix either.
RestartPreventExitStatus=2 3

# A throw-away system user; the model and caches live in its state and cache directories.
DynamicUser=yes
StateDirectory=edged
CacheDirectory=edged
WorkingDirectory=%S/edged
Environment=HF_HOME=%S/edged/huggingface
Environment=XDG_CACHE_HOME=%C/edged
Environment=HF_HUB_OFFLINE=1
# The MQTT password (first line; an empty file means none). edged reads $CREDENTIALS_DIRECTORY/mqtt-password;
# the file itself stays readable by root only.
LoadCredential=mqtt-password:/etc/edged/mqtt-password
# Logs: JSON events on stdout with a <N> priority prefix: journalctl -t edged -p warning works.
SyslogIdentifier=edged

# Hardening (systemd-analyze security edged). Memory limits: see the drop-in (MemoryMax=).
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome={protect_home}
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RemoveIPC=yes
CapabilityBoundingSet=
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged
SystemCallErrorNumber=EPERM
UMask=0077
# Not set: MemoryDenyWriteExecute=/ProcSubset=pid (untested with MLX, which compiles CPU kernels at run
# time), ~@resources (thread affinity, NUMA), PrivateNetwork=/IPAddressDeny= (the broker may be remote).

[Install]
WantedBy=multi-user.target
"""

SYSTEMD_DROPIN = """\
# A sample drop-in: copy to /etc/systemd/system/edged.service.d/override.conf (or run
# `systemctl edit edged`), keep what you need, then: systemctl daemon-reload && systemctl restart edged

[Service]
# Memory: Qwen3-4B 4-bit needs ~2.5 GB of weights plus the KV cache (grows with context and sessions).
# Above MemoryHigh the kernel reclaims hard; above MemoryMax it kills edged and Restart= brings it back.
MemoryHigh=5G
MemoryMax=6G

# Settings as environment variables override /etc/edged/edged.toml:
#Environment=EDGED_MQTT__HOST=broker.lan
#Environment=EDGED_LOG__LEVEL=debug

# Very long prompts on a slow CPU: raise both the health limit and the watchdog.
#Environment=EDGED_HEALTH__STUCK_AFTER_S=900
#WatchdogSec=120

# Mutual TLS: the CA and the certificate may be world-readable files in /etc/edged. The private key stays
# root-only: edged.toml names /etc/edged/edged.key (so `edged config check` works as root), and the
# service reads the copy systemd hands it as a credential (%d: the credentials directory):
#LoadCredential=mqtt-tls-key:/etc/edged/edged.key
#Environment=EDGED_MQTT__TLS__KEY_FILE=%d/mqtt-tls-key

# A model outside the state directory (read-only is enough):
#ReadOnlyPaths=/srv/models
#Environment=EDGED_MODEL__PATH=/srv/models/Qwen3-4B-MLX-4bit

# A GPU backend needs its devices:
#PrivateDevices=no
"""


def edged_program() -> list[str]:
    """How to start this installation's ``edged``: its console script, else ``python -m edged.cli``."""
    script = shutil.which("edged", path=os.path.dirname(sys.executable))
    return [os.path.abspath(script)] if script else [os.path.abspath(sys.executable), "-m", "edged.cli"]


def run_arguments(program: list[str], config: str) -> list[str]:
    return [*program, "run", "--config", config]


def _systemd_quote(arg: str) -> str:
    if arg and not any(c.isspace() or c in "\"'\\;$%" for c in arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$") + '"'


def systemd_unit(program: list[str] | None = None, config: str = DEFAULT_CONFIG) -> str:
    program = program or [DEFAULT_EXEC]
    args = run_arguments(program, config)
    in_home = any(p == h or p.startswith(h + "/") for p in (program[0], config) for h in HOME_DIRS)
    return SYSTEMD_UNIT.format(
        exec_start=" ".join(_systemd_quote(a) for a in args),
        protect_home="read-only" if in_home else "yes",
    )


def launchd_paths(scope: LaunchdScope, home: Path) -> dict[str, Path]:
    """Where the plist goes, and edged's working directory and log file, for a daemon or a per-user agent."""
    if scope == "daemon":
        return {
            "plist": Path("/Library/LaunchDaemons") / f"{LAUNCHD_LABEL}.plist",
            "workdir": Path("/usr/local/var/edged"),
            "log": Path("/Library/Logs/edged/edged.log"),
            "config": Path(DEFAULT_CONFIG),
        }
    return {
        "plist": home / "Library/LaunchAgents" / f"{LAUNCHD_LABEL}.plist",
        "workdir": home / "Library/Application Support/edged",
        "log": home / "Library/Logs/edged/edged.log",
        "config": home / ".config/edged/edged.toml",
    }


def launchd_plist(
    scope: LaunchdScope,
    *,
    program: list[str] | None = None,
    config: str | None = None,
    home: Path,
    user: str | None = None,
) -> bytes:
    """A launchd job: started at load, restarted after a crash or an error exit (not after a clean stop)."""
    paths = launchd_paths(scope, home)
    job: dict[str, Any] = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": run_arguments(program or [DEFAULT_EXEC], config or str(paths["config"])),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": 10,  # at most one restart per 10 s
        "ExitTimeOut": 60,  # SIGTERM, then this long for the request in progress, then SIGKILL
        "WorkingDirectory": str(paths["workdir"]),
        "StandardOutPath": str(paths["log"]),
        "StandardErrorPath": str(paths["log"]),
        "EnvironmentVariables": {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
        "ProcessType": "Standard",
    }
    if scope == "daemon":
        job["UserName"] = user or "_edged"
        job["EnvironmentVariables"]["HF_HOME"] = str(paths["workdir"] / "huggingface")
    return plistlib.dumps(job, sort_keys=False)


def install_systemd(dest: Path, config: str) -> list[Path]:
    """Write the unit (replacing an older one) and the sample drop-in (never over local overrides)."""
    unit, dropin = dest / UNIT_NAME, dest / f"{UNIT_NAME}.d" / "override.conf"
    dropin.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(systemd_unit(edged_program(), config))
    written = [unit]
    if not dropin.exists():
        dropin.write_text(SYSTEMD_DROPIN)
        written.append(dropin)
    return written


def install_launchd(
    scope: LaunchdScope, dest: Path | None, config: str | None, user: str | None, home: Path
) -> list[Path]:
    """Write the plist; create the working and log directories (owned by ``user`` when run as root)."""
    paths = launchd_paths(scope, home)
    plist = (dest / paths["plist"].name) if dest else paths["plist"]
    plist.parent.mkdir(parents=True, exist_ok=True)
    plist.write_bytes(launchd_plist(scope, program=edged_program(), config=config, home=home, user=user))
    if dest is None:  # the real locations: make what the job needs
        for directory in (paths["workdir"], paths["log"].parent):
            directory.mkdir(parents=True, exist_ok=True)
            if scope == "daemon" and user and os.geteuid() == 0:
                shutil.chown(directory, user=user)
    return [plist]


def systemd_next_steps(config: str) -> str:
    return f"""\
next steps:
  install -D -m 644 config/edged.toml {config}        # if it is not there yet; edit it
  install -m 600 /dev/null /etc/edged/mqtt-password    # then put the MQTT password in it (or leave it empty)
  systemctl daemon-reload && systemctl enable --now edged
  systemctl status edged && journalctl -t edged -f
reload the configuration: systemctl reload edged
uninstall: systemctl disable --now edged && rm -r /etc/systemd/system/{UNIT_NAME} /etc/systemd/system/{UNIT_NAME}.d"""


def launchd_next_steps(scope: LaunchdScope, plist: Path) -> str:
    domain = "system" if scope == "daemon" else "gui/$(id -u)"
    sudo = "sudo " if scope == "daemon" else ""
    return f"""\
next steps:
  {sudo}launchctl bootstrap {domain} '{plist}'
  {sudo}launchctl print {domain}/{LAUNCHD_LABEL}
reload the configuration: {sudo}launchctl kill HUP {domain}/{LAUNCHD_LABEL}
uninstall: {sudo}launchctl bootout {domain}/{LAUNCHD_LABEL} && {sudo}rm '{plist}'"""


def samples() -> dict[str, bytes]:
    """The repository's sample files (path relative to the repository root) and their content."""
    return {
        f"systemd/{UNIT_NAME}": systemd_unit().encode(),
        f"systemd/{UNIT_NAME}.d/override.conf": SYSTEMD_DROPIN.encode(),
        f"launchd/{LAUNCHD_LABEL}.daemon.plist": launchd_plist("daemon", home=Path("/var/empty")),
        f"launchd/{LAUNCHD_LABEL}.agent.plist": launchd_plist("agent", home=Path("/Users/you")),
    }


def write_samples(root: Path) -> None:
    """Regenerate the repository's sample files (``make service-files``)."""
    for name, content in samples().items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
