"""The rollout strategy setting: Ansible's linear or Mitogen's, checked at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import SettingError
from controller.rollouts.runner import RunnerSettings, ansible_env, mitogen_strategy_dir
from controller.settings import ControllerSettings


def _settings(tmp_path: Path, strategy: str) -> RunnerSettings:
    return RunnerSettings(
        remote_user="root",
        known_hosts=tmp_path / "known_hosts",
        control_path_dir=Path("/tmp/sf-cp"),  # noqa: S108
        strategy=strategy,
    )


def test_mitogen_runs_as_the_strategy_plugin_of_the_installed_package(tmp_path: Path) -> None:
    env = ansible_env(_settings(tmp_path, "mitogen"), tmp_path / "home")
    assert env["ANSIBLE_STRATEGY"] == "mitogen_linear"
    plugins = Path(env["ANSIBLE_STRATEGY_PLUGINS"])
    assert plugins == mitogen_strategy_dir()
    assert (plugins / "mitogen_linear.py").is_file()
    assert "ANSIBLE_STRATEGY" not in ansible_env(_settings(tmp_path, "linear"), tmp_path / "h2")


def test_an_unknown_strategy_is_refused_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(SettingError) as caught:
        ControllerSettings(data_dir=tmp_path, rollout_strategy="free")
    assert caught.value.key == "rollout_strategy"
    assert str(caught.value) == "'rollout_strategy' must be mitogen or linear, got 'free'"
    with pytest.raises(SettingError, match="'strategy' must be one of mitogen, linear"):
        _settings(tmp_path, "free")
