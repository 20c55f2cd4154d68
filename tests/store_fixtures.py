"""Every feature's stores on each database in turn, for the contract suites that
run one test against SQLite and PostgreSQL alike."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.stores import Stores, open_stores


@pytest.fixture(params=["sqlite", "postgresql"])
def both_stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stores]:
    """The stores on a new SQLite file, then on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:{tmp_path / 'c.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    stores = open_stores(url)
    try:
        yield stores
    finally:
        stores.close()
