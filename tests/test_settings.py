"""Settings: defaults < TOML < environment < flags, and one clear line when wrong."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from agent.settings import KIOSK_ARGV, AgentSettings
from common.errors import ConfigError
from common.settings import load_settings, load_settings_lenient
from controller.settings import ControllerSettings
from inventory.model import DeviceKind
from tests.procs import BIN


def _controller(
    path: Path | None, env: dict[str, str] | None = None, **flags: object
) -> ControllerSettings:
    return load_settings(
        ControllerSettings, path=path, env_prefix="SF_", environ=env or {}, overrides=flags
    )


def test_precedence(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('heartbeat_interval = 10\nlisten = "0.0.0.0:9000"\nflush_interval = 1\n')
    s = _controller(f, {"SF_HEARTBEAT_INTERVAL": "20"}, listen="127.0.0.1:1")
    assert s.heartbeat_interval == 20  # environment over file
    assert s.listen == "127.0.0.1:1"  # flag over file
    assert s.flush_interval == 1.0  # an integer is fine for a float
    assert s.offline_after == 60
    assert _controller(None).database.startswith("sqlite:")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("heartbeat_interval = 'soon'", "'heartbeat_interval' must be an integer, got 'soon'"),
        ("colour = 'blue'", "unknown key 'colour'"),
        ("listen = '127.0.0.1'", "'listen' must be HOST:PORT"),
        ("heartbeat_interval = 0", "'heartbeat_interval' must be at least 1"),
        ("database = 'mysql://x'", "'database' must be sqlite:"),
        ("log_level = 'loud'", "'log_level' must be one of"),
        ("listen = ", "not valid TOML"),
        (
            "proxy_from = ['10.0.0.0/8', 'haproxy.local']",
            "'proxy_from': 'haproxy.local' is not an address or a network",
        ),
        ("proxy_from = '10.0.0.1'", "'proxy_from' must be a list"),
        ("database_connections = 2", "'database_connections' must be 4 to 100"),
    ],
)
def test_bad_file_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(text + "\n")
    with pytest.raises(ConfigError) as caught:
        _controller(f)
    assert message in str(caught.value)
    assert str(f) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_bad_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="SF_BATCH_MAX='many': must be an integer"):
        _controller(None, {"SF_BATCH_MAX": "many"})


def test_agent_identity_is_required_and_checked(tmp_path: Path) -> None:
    f = tmp_path / "a.toml"
    f.write_text('device_id = "p1"\nkind = "panel"\n')
    with pytest.raises(ConfigError, match="missing required key 'school_id'"):
        load_settings(AgentSettings, path=f, env_prefix="A_", environ={})
    s = load_settings(AgentSettings, path=f, env_prefix="A_", environ={"A_SCHOOL_ID": "s1"})
    assert s.kind is DeviceKind.PANEL
    f.write_text('device_id = "p1"\nkind = "toaster"\nschool_id = "s1"\n')
    with pytest.raises(ConfigError, match="'kind' must be one of panel, monoblock, laptop, server"):
        load_settings(AgentSettings, path=f, env_prefix="A_", environ={})


IDENTITY = 'device_id = "p1"\nkind = "panel"\nschool_id = "s1"\n'


def _agent(
    path: Path, text: str, env: dict[str, str] | None = None
) -> tuple[AgentSettings, list[str]]:
    path.write_text(text)
    return load_settings_lenient(AgentSettings, path=path, env_prefix="A_", environ=env or {})


def test_lenient_wrong_type_in_the_file_falls_back_to_the_default(tmp_path: Path) -> None:
    f = tmp_path / "a.toml"
    s, problems = _agent(f, IDENTITY + 'heartbeat_interval = "fast"\nbackoff_cap = 9\n')
    assert problems == [
        f"config {f}: 'heartbeat_interval' must be a number, got 'fast'; using the default 30.0"
    ]
    assert s.heartbeat_interval == 30.0
    assert (s.device_id, s.backoff_cap) == ("p1", 9.0)  # the good values still count


def test_lenient_wrong_type_in_the_environment_falls_back_to_the_default(
    tmp_path: Path,
) -> None:
    f = tmp_path / "a.toml"
    s, problems = _agent(f, IDENTITY + "max_message_bytes = 2048\n", {"A_MAX_MESSAGE_BYTES": "4M"})
    # The default, not the file's 2048: that is what the problem line promises.
    assert problems == [
        "environment A_MAX_MESSAGE_BYTES='4M': must be an integer; using the default 4194304"
    ]
    assert s.max_message_bytes == 4 * 1024 * 1024


def test_lenient_refused_value_names_where_it_was_set(tmp_path: Path) -> None:
    f = tmp_path / "a.toml"
    s, problems = _agent(f, IDENTITY + "heartbeat_interval = -5\n", {"A_LOG_LEVEL": "loud"})
    assert problems == [
        f"config {f}: 'heartbeat_interval' must be positive; using the default 30.0",
        "environment A_LOG_LEVEL: 'log_level' must be one of debug, info, warning, error; "
        "using the default 'info'",
    ]
    assert (s.heartbeat_interval, s.log_level) == (30.0, "info")


def test_lenient_rule_over_two_keys_resets_the_one_that_was_set(tmp_path: Path) -> None:
    f = tmp_path / "a.toml"
    s, problems = _agent(f, IDENTITY + "backoff_cap = 0.5\n")
    assert problems == [
        f"config {f}: 'backoff_initial' must be positive and at most 'backoff_cap'; "
        "using the default 60.0 for 'backoff_cap'"
    ]
    assert (s.backoff_initial, s.backoff_cap) == (1.0, 60.0)


def test_lenient_controller_validation_names_the_key(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("listen = '127.0.0.1'\nshutdown_grace = -1\nbatch_max = 7\n")
    s, problems = load_settings_lenient(ControllerSettings, path=f, env_prefix="SF_", environ={})
    assert problems == [
        f"config {f}: 'listen' must be HOST:PORT, got '127.0.0.1'; "
        "using the default '127.0.0.1:7443'",
        f"config {f}: 'shutdown_grace' must be >= 0; using the default 0.5",
    ]
    assert (s.listen, s.shutdown_grace, s.batch_max) == ("127.0.0.1:7443", 0.5, 7)


def test_lenient_unknown_key_is_ignored(tmp_path: Path) -> None:
    f = tmp_path / "a.toml"
    s, problems = _agent(f, IDENTITY + "colour = 'blue'\n")
    assert len(problems) == 1
    assert problems[0].startswith(f"config {f}: unknown key 'colour' (known keys: backoff_cap, ")
    assert problems[0].endswith("; ignored")
    assert s == AgentSettings(device_id="p1", kind=DeviceKind.PANEL, school_id="s1")


def test_lenient_file_that_is_not_toml_is_ignored(tmp_path: Path) -> None:
    f = tmp_path / "a.toml"
    env = {"A_DEVICE_ID": "p2", "A_KIND": "laptop", "A_SCHOOL_ID": "s2"}
    s, problems = _agent(f, IDENTITY + "heartbeat_interval = \n", env)
    assert len(problems) == 1
    assert problems[0].startswith(f"config {f}: not valid TOML: ")
    assert problems[0].endswith("; ignoring the file")
    assert s == AgentSettings(device_id="p2", kind=DeviceKind.LAPTOP, school_id="s2")
    # Without the identity from elsewhere, the error is the cause, not "missing key".
    with pytest.raises(ConfigError, match=r"a\.toml: not valid TOML: .*line 4") as caught:
        _agent(f, IDENTITY + "heartbeat_interval = \n")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ('device_id = "p1"\nkind = "panel"\n', {}, "missing required key 'school_id'"),
        (IDENTITY.replace('"panel"', '"toaster"'), {}, "'kind' must be one of panel,"),
        (IDENTITY.replace('"p1"', '"p 1"'), {}, "'device_id' 'p 1' is not a valid id"),
        (IDENTITY, {"A_KIND": "toaster"}, "A_KIND='toaster': must be one of panel,"),
    ],
)
def test_lenient_still_refuses_a_missing_or_bad_identity(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _agent(tmp_path / "a.toml", text, env)


def test_lenient_missing_required_file_is_still_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: file not found"):
        load_settings_lenient(
            AgentSettings,
            path=tmp_path / "nope.toml",
            env_prefix="A_",
            environ={},
            required_file=True,
        )


def test_agent_with_a_wrong_value_logs_it_and_goes_on(tmp_path: Path) -> None:
    f = tmp_path / "agent.toml"
    f.write_text(IDENTITY + 'heartbeat_interval = "often"\n')
    done = subprocess.run(
        [str(BIN / "schoolfleet-agent"), "--config", str(f), "--once", "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["device_id"] == "p1"
    [line] = done.stderr.strip().splitlines()
    assert line.endswith(
        f" ERROR agent: config problem: config {f}: 'heartbeat_interval' must be a number, "
        "got 'often'; using the default 30.0"
    )
    missing = subprocess.run(
        [str(BIN / "schoolfleet-agent"), "--config", str(tmp_path / "nope.toml")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert missing.returncode == 2
    assert missing.stderr.strip() == (
        f"schoolfleet-agent: config {tmp_path / 'nope.toml'}: file not found"
    )


def test_controller_with_a_wrong_flag_says_so_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            str(BIN / "schoolfleet-controller"),
            "serve",
            "--config",
            str(tmp_path / "c.toml"),
            "--listen",
            "nowhere",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"schoolfleet-controller: config {tmp_path / 'c.toml'}: file not found"
    ]


def test_kiosk_argv_is_a_list_of_strings_from_the_file_or_the_environment(
    tmp_path: Path,
) -> None:
    f = tmp_path / "a.toml"
    f.write_text(IDENTITY + "kiosk_argv = ['/opt/kiosk', '--url={url}']\n")
    s = load_settings(AgentSettings, path=f, env_prefix="A_", environ={})
    assert s.kiosk_argv == ("/opt/kiosk", "--url={url}")
    # The environment takes the same TOML array; spaces inside an item are kept.
    env = {"A_KIOSK_ARGV": '["my kiosk", "{url}"]'}
    s = load_settings(AgentSettings, path=f, env_prefix="A_", environ=env)
    assert s.kiosk_argv == ("my kiosk", "{url}")
    s = load_settings(AgentSettings, path=f, env_prefix="A_", environ={"A_KIOSK_ARGV": "[]"})
    assert s.kiosk_argv == ()
    assert AgentSettings(device_id="p1", kind=DeviceKind.PANEL, school_id="s1").kiosk_argv == (
        KIOSK_ARGV
    )


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("kiosk_argv = 'chromium {url}'", {}, "'kiosk_argv' must be a list of strings, got"),
        ("kiosk_argv = ['chromium', 3]", {}, "'kiosk_argv' must be a list of strings, got"),
        ("", {"A_KIOSK_ARGV": "chromium {url}"}, "A_KIOSK_ARGV='chromium {url}': must be a list"),
        ("", {"A_KIOSK_ARGV": '["a"]\nx = 1'}, "A_KIOSK_ARGV="),
        ("kiosk_argv = ['chromium', '--kiosk']", {}, "one of them with {url}"),
        ("kiosk_argv = ['', '{url}']", {}, "'kiosk_argv' must be empty or a program"),
    ],
)
def test_bad_kiosk_argv_is_refused(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    f = tmp_path / "a.toml"
    f.write_text(IDENTITY + text + "\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(AgentSettings, path=f, env_prefix="A_", environ=env)
    assert message in str(caught.value)
    # Lenient: the default argv, shown as it would be written in the file.
    s, problems = _agent(f, IDENTITY + text + "\n", env)
    assert s.kiosk_argv == KIOSK_ARGV
    assert len(problems) == 1
    assert "using the default ['chromium', '--kiosk', " in problems[0]
