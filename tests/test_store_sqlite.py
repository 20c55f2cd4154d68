"""The SQLite file: migrations, reopening, URLs; and the helpers and the SQLite store
other features' tests use. The devices' store itself, on both databases, is
tests/test_fleet_store_contract.py."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.errors import StoreError
from controller.store import sqlite_path
from controller.store.migrations import LATEST
from controller.store.rows import HeartbeatRow
from controller.stores import Stores, open_stores, sqlite_stores
from inventory.model import DeviceIdentity, DeviceKind, Health

T0 = 1_800_000_000.0


def ident(
    device_id: str, school: str = "s1", kind: DeviceKind = DeviceKind.PANEL
) -> DeviceIdentity:
    return DeviceIdentity(device_id, kind, school, "r1", "host", "0.1")


def beat(device_id: str, seq: int, at: float, cpu: float = 5.0) -> HeartbeatRow:
    return HeartbeatRow(device_id, seq, at, Health(at, cpu, 10, 20, 100, 0.1, 0.2, 0.3))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Stores]:
    s = sqlite_stores(tmp_path / "c.db")
    yield s
    s.close()


def test_migrates_from_empty_and_reopens(tmp_path: Path) -> None:
    s = sqlite_stores(tmp_path / "c.db")
    assert s.database.schema_version() == LATEST
    s.close()
    again = sqlite_stores(tmp_path / "c.db")
    assert again.database.schema_version() == LATEST
    with sqlite3.connect(tmp_path / "c.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again.close()


def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "c.db") as db:
        db.execute(f"PRAGMA user_version={LATEST + 1}")
    with pytest.raises(StoreError, match="newer than this controller knows"):
        sqlite_stores(tmp_path / "c.db")


def test_urls() -> None:
    assert sqlite_path("sqlite:///var/lib/x.db") == Path("/var/lib/x.db")
    assert sqlite_path("sqlite:data/x.db") == Path("data/x.db")
    with pytest.raises(StoreError, match="unsupported URL"):
        open_stores("mysql://x")
