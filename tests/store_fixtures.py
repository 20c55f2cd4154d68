"""Every feature's stores on each database in turn, for the contract suites that
run one test against SQLite and PostgreSQL alike."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

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


def at_once(*calls: Callable[[], Any]) -> list[Any]:
    """Each call on a thread of its own, all released together (several controllers
    writing at the same moment); what each returned or raised."""
    start = threading.Barrier(len(calls))

    def run(call: Callable[[], Any]) -> Any:
        start.wait()
        try:
            return call()
        except Exception as exc:  # the outcome under test
            return exc

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))
