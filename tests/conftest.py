"""Fixtures that start real processes and always stop them, by pid."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# The PostgreSQL server (a throwaway cluster, started only by a test that asks for it)
# and a fresh database per test: tests/pg_cluster.py.
from tests.pg_cluster import pg_server, pg_url
from tests.procs import Agent, Controller

# Every feature's stores on SQLite, then on PostgreSQL: tests/store_fixtures.py.
from tests.store_fixtures import both_stores

__all__ = ["agents", "both_stores", "controller", "pg_server", "pg_url"]


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[Controller]:
    """A started controller with a 1 s heartbeat interval (offline after 3 s)."""
    c = Controller(tmp_path, env={"SCHOOLFLEET_CONTROLLER_HEARTBEAT_INTERVAL": "1"})
    try:
        yield c.start()
    finally:
        c.stop()


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[list[Agent]]:
    """A list the test appends its agents to; each is stopped afterwards."""
    started: list[Agent] = []
    try:
        yield started
    finally:
        for agent in started:
            agent.stop()
