"""The documented example configs load, and document every key."""

from __future__ import annotations

import tomllib
from pathlib import Path

from agent.settings import AgentSettings
from common.settings import field_types, load_settings
from controller.settings import ControllerSettings

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_controller_example_is_complete_and_loads() -> None:
    path = DOCS / "controller.toml.example"
    settings = load_settings(ControllerSettings, path=path, env_prefix="X_", environ={})
    assert settings == ControllerSettings()  # the example shows the defaults
    text = path.read_text()
    assert all(f"{key} =" in text for key in field_types(ControllerSettings))


def test_agent_example_is_complete_and_loads() -> None:
    path = DOCS / "agent.toml.example"
    settings = load_settings(AgentSettings, path=path, env_prefix="X_", environ={})
    assert settings.device_id == "panel-1234-101"
    assert set(tomllib.loads(path.read_text())) == set(field_types(AgentSettings))
