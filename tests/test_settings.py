"""Settings: defaults < TOML < environment < flags, and one clear line when wrong."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent.settings import AgentSettings
from common.errors import ConfigError
from common.settings import load_settings
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
        ("database = 'postgres://x'", "'database' must be sqlite:"),
        ("log_level = 'loud'", "'log_level' must be one of"),
        ("listen = ", "not valid TOML"),
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


def test_agent_with_a_wrong_config_says_so_in_one_line(tmp_path: Path) -> None:
    f = tmp_path / "agent.toml"
    f.write_text(
        'device_id = "p1"\nkind = "panel"\nschool_id = "s1"\nheartbeat_interval = "often"\n'
    )
    done = subprocess.run(
        [str(BIN / "schoolfleet-agent"), "--config", str(f)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"schoolfleet-agent: config {f}: 'heartbeat_interval' must be a number, got 'often'"
    )
    missing = subprocess.run(
        [str(BIN / "schoolfleet-agent"), "--config", str(tmp_path / "nope.toml")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert missing.returncode == 2
    assert "nope.toml: file not found" in missing.stderr


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
