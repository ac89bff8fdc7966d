"""Settings: TOML file, EDGED_* environment, validation rules, and `edged config check`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from edged.cli import main
from edged.settings import Settings, find_config_file, load_settings, sanitise_node_id

SAMPLING = {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "max_tokens": 100}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No EDGED_* variables and no default config file leak into a test."""
    for name in list(os.environ):
        if name.startswith("EDGED_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))


def write(tmp_path: Path, text: str, name: str = "edged.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_load_from_toml_with_nested_sections(tmp_path: Path) -> None:
    """Values from nested TOML tables reach the nested settings."""
    path = write(
        tmp_path,
        """
node_id = "plant-1"
[mqtt]
host = "broker.local"
port = 1884
[model]
path = "/models/qwen"
[model.no_think]
temperature = 0.5
top_p = 0.8
top_k = 10
max_tokens = 64
[sessions]
max_turns = 2
""",
    )
    s = load_settings(path)
    assert s.node_id == "plant-1"
    assert (s.mqtt.host, s.mqtt.port) == ("broker.local", 1884)
    assert s.model.path == "/models/qwen" and s.model.display_name() == "qwen"
    assert (s.model.no_think.temperature, s.model.no_think.max_tokens) == (0.5, 64)
    assert s.model.think.thinking_budget == 3072  # untouched table keeps its default
    assert s.sessions.max_turns == 2 and s.sessions.idle_s == 1800


def test_env_beats_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EDGED_MQTT__PORT overrides the file's port; the file's other values stay."""
    path = write(tmp_path, 'node_id = "n1"\n[mqtt]\nhost = "broker.local"\nport = 1884\n')
    monkeypatch.setenv("EDGED_MQTT__PORT", "1999")
    s = load_settings(path)
    assert s.mqtt.port == 1999
    assert s.mqtt.host == "broker.local"


def test_overrides_beat_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Explicit overrides win over the environment."""
    monkeypatch.setenv("EDGED_NODE_ID", "from-env")
    assert load_settings().node_id == "from-env"
    assert load_settings(node_id="explicit").node_id == "explicit"


def test_edged_config_env_selects_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$EDGED_CONFIG names the file when --config is not given."""
    path = write(tmp_path, 'node_id = "via-env"\n')
    monkeypatch.setenv("EDGED_CONFIG", str(path))
    assert find_config_file(None) == path
    assert load_settings().node_id == "via-env"


@pytest.mark.parametrize(
    "text", ['node_id = "n"\ncolour = "red"\n', '[mqtt]\nhots = "x"\n', "[model.think]\nbogus = 1\n"]
)
def test_unknown_key_is_refused(tmp_path: Path, text: str) -> None:
    """An unknown key anywhere in the file is a validation error."""
    with pytest.raises(ValidationError) as info:
        load_settings(write(tmp_path, text))
    assert any(e["type"] == "extra_forbidden" for e in info.value.errors())


def test_password_and_password_file_conflict(tmp_path: Path) -> None:
    """Setting both password and password_file is refused."""
    (tmp_path / "pw").write_text("secret\n")
    with pytest.raises(ValidationError, match="either password or password_file"):
        Settings(node_id="n", mqtt={"password": "x", "password_file": str(tmp_path / "pw")})


def test_password_file_first_line(tmp_path: Path) -> None:
    """resolved_password reads the first line of password_file."""
    pw = tmp_path / "pw"
    pw.write_text("s3cret\nignored\n", encoding="utf-8")
    s = Settings(node_id="n", mqtt={"password_file": str(pw)})
    assert s.mqtt.resolved_password() == "s3cret"


def test_password_inline() -> None:
    """An inline password is a secret that resolves to its value."""
    s = Settings(node_id="n", mqtt={"password": "hunter2"})
    assert "hunter2" not in repr(s.mqtt)
    assert s.mqtt.resolved_password() == "hunter2"
    assert Settings(node_id="n").mqtt.resolved_password() is None


@pytest.mark.parametrize("budget", [100, 150])
def test_thinking_budget_must_be_below_max_tokens(budget: int) -> None:
    """thinking_budget >= max_tokens leaves no room for the answer and is refused."""
    with pytest.raises(ValidationError, match="thinking_budget"):
        Settings(node_id="n", model={"think": {**SAMPLING, "thinking_budget": budget}})
    ok = Settings(node_id="n", model={"think": {**SAMPLING, "thinking_budget": 99}})
    assert ok.model.think.thinking_budget == 99


def test_think_temperature_zero_is_refused() -> None:
    """Greedy decoding in think mode is refused."""
    with pytest.raises(ValidationError, match="think.temperature"):
        Settings(node_id="n", model={"think": {**SAMPLING, "temperature": 0}})
    no_think_greedy = Settings(node_id="n", model={"no_think": {**SAMPLING, "temperature": 0}})
    assert no_think_greedy.model.no_think.temperature == 0


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Pi-Kitchen", "pi-kitchen"),
        ("my.host.local", "my-host-local"),
        ("a b__c", "a-b__c"),
        ("..", "edged"),
        ("", "edged"),
    ],
)
def test_sanitise_node_id(raw: str, clean: str) -> None:
    """Host names become lower-case [a-z0-9_-] ids."""
    assert sanitise_node_id(raw) == clean


def test_default_node_id_is_valid() -> None:
    """The host-derived default node_id passes its own validation."""
    s = Settings()
    assert s.node_id == sanitise_node_id(s.node_id)


def test_unsanitised_node_id_is_refused() -> None:
    """A configured node_id with invalid characters is refused, with a suggestion."""
    with pytest.raises(ValidationError, match="'my-host'"):
        Settings(node_id="My.Host")


def test_base_topic_default_and_explicit() -> None:
    """The base topic defaults to edged/{node_id}; an explicit one is used as is."""
    assert Settings(node_id="n1").base == "edged/n1"
    assert Settings(node_id="n1", base_topic="site/a/llm").base == "site/a/llm"
    assert Settings(node_id="n1").client_id == "edged-n1"


@pytest.mark.parametrize("base", ["site/+/llm", "site/#", "site/", ""])
def test_bad_base_topic(base: str) -> None:
    """A base topic with a wildcard, a trailing '/' or no characters is refused."""
    with pytest.raises(ValidationError, match="base_topic"):
        Settings(node_id="n1", base_topic=base)


def test_find_config_file_missing(tmp_path: Path) -> None:
    """$EDGED_CONFIG or --config naming a missing file is an error, not a silent default."""
    missing = tmp_path / "nope.toml"
    with pytest.raises(FileNotFoundError, match="nope.toml"):
        find_config_file(None, {"EDGED_CONFIG": str(missing)})
    with pytest.raises(FileNotFoundError):
        find_config_file(missing, {})


def test_find_config_file_none_without_defaults() -> None:
    """Without --config, $EDGED_CONFIG or a default file there is no config file."""
    assert find_config_file(None, {}) is None


def test_find_config_file_prefers_explicit(tmp_path: Path) -> None:
    """--config wins over $EDGED_CONFIG."""
    explicit = write(tmp_path, "", "a.toml")
    from_env = write(tmp_path, "", "b.toml")
    assert find_config_file(explicit, {"EDGED_CONFIG": str(from_env)}) == explicit
    assert find_config_file(None, {"EDGED_CONFIG": str(from_env)}) == from_env


def test_find_config_file_default_in_home(tmp_path: Path) -> None:
    """~/.config/edged/edged.toml is found when nothing else is given."""
    (tmp_path / ".config" / "edged").mkdir(parents=True)
    default = write(tmp_path / ".config" / "edged", 'node_id = "home"\n')
    if Path("/etc/edged/edged.toml").is_file():
        pytest.skip("/etc/edged/edged.toml exists on this machine and takes precedence")
    assert find_config_file(None, {}) == default
    assert load_settings().node_id == "home"


def test_partial_sampling_table_keeps_defaults(tmp_path: Path) -> None:
    """Setting one sampling value keeps the defaults of the others."""
    s = load_settings(write(tmp_path, 'node_id = "n"\n[model.think]\ntemperature = 0.5\n'))
    assert s.model.think.temperature == 0.5
    assert (s.model.think.top_p, s.model.think.max_tokens) == (0.95, 4096)


def test_cli_config_check_ok_masks_password(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`edged config check` prints the settings as JSON with the password masked."""
    path = write(tmp_path, 'node_id = "n1"\n[mqtt]\nhost = "broker.local"\nusername = "edge"\npassword = "hunter2"\n')
    assert main(["config", "check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    data = json.loads(out)
    assert data["node_id"] == "n1"
    assert data["mqtt"]["host"] == "broker.local" and data["mqtt"]["username"] == "edge"
    assert "hunter2" not in out
    assert data["mqtt"]["password"] == "**********"


def test_cli_config_check_lists_every_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An invalid file exits 2 and prints each error with its dotted field path."""
    path = write(
        tmp_path,
        '[mqtt]\nport = 0\n[log]\nlevel = "loud"\n[requests]\nqueue_size = 0\n[model.think]\n'
        "temperature = 0.6\ntop_p = 2\ntop_k = 20\nmax_tokens = 10\n",
    )
    assert main(["config", "check", "--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "4 configuration error(s)" in captured.err
    for where in ("mqtt.port", "log.level", "requests.queue_size", "model.think.top_p"):
        assert f"  {where}: " in captured.err


def test_cli_config_check_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing --config file exits 2 with a message naming it."""
    assert main(["config", "check", "--config", str(tmp_path / "absent.toml")]) == 2
    assert "absent.toml" in capsys.readouterr().err


def test_empty_or_missing_password_file_is_a_config_error(tmp_path: Path) -> None:
    """A password_file that is empty or unreadable is refused when the settings are loaded."""
    empty = tmp_path / "pw"
    empty.write_text("")
    for path, needle in ((empty, "empty"), (tmp_path / "nope", "cannot read")):
        with pytest.raises(ValidationError, match=needle):
            load_settings(write(tmp_path, f'node_id = "n"\n[mqtt]\npassword_file = "{path}"\n'))


@pytest.mark.parametrize(
    "scheduler", [{"max_batch": 0}, {"fair_share": 0}, {"prefill_chunk": 4}, {"max_batch": 4, "batch": 2}]
)
def test_scheduler_settings_are_validated(scheduler: dict[str, int]) -> None:
    """The scheduler's knobs have bounds, and unknown keys are refused."""
    with pytest.raises(ValidationError, match="scheduler"):
        Settings(node_id="n", model={"scheduler": scheduler})


def test_example_config_documents_the_scheduler() -> None:
    """config/edged.toml loads and states the scheduler's defaults."""
    example = load_settings(Path(__file__).resolve().parent.parent / "config" / "edged.toml", node_id="n")
    assert example.model.scheduler == Settings(node_id="n").model.scheduler
