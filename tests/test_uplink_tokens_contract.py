"""Uplink transfer tokens in the store, on both databases: a token serves once, with its
size and label; revoked, expired and unknown ones serve nothing; only a hash is kept;
expired ones are swept. Controllers sharing the store (four stores on one database:
one PostgreSQL database, or one SQLite file) take a token another issued, and of
several taking one token at once exactly one has it."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from controller.stores import Stores, open_stores
from controller.uplink.sql_tokens import SqlTokens

R = TypeVar("R")


@pytest.fixture
def store(both_stores: Stores) -> Stores:
    return both_stores


@pytest.fixture
def tokens(store: Stores) -> SqlTokens:
    return SqlTokens(store.sql)


def _rows(store: Stores) -> int:
    return int(store.sql.read("SELECT COUNT(*) AS n FROM uplink_tokens")[0]["n"])


def test_a_token_serves_its_size_and_label_once(store: Stores, tokens: SqlTokens) -> None:
    token = tokens.issue(100_000_000, 60, "school=s1 device=srv-1")
    assert len(token) == 32
    assert tokens.take(token) == (100_000_000, "school=s1 device=srv-1")
    assert tokens.take(token) is None
    assert _rows(store) == 0


def test_only_a_hash_of_a_token_is_stored(store: Stores, tokens: SqlTokens) -> None:
    token = tokens.issue(10, 60)
    [row] = store.sql.read("SELECT token_hash, bytes, label FROM uplink_tokens")
    assert dict(row) == {
        "token_hash": hashlib.sha256(token.encode()).hexdigest(),
        "bytes": 10,
        "label": "",
    }
    # A copy of the database is no good as a token.
    assert tokens.take(row["token_hash"]) is None
    assert tokens.take(token) == (10, "")


def test_revoked_unknown_and_malformed_tokens_serve_nothing(
    store: Stores, tokens: SqlTokens
) -> None:
    token = tokens.issue(10, 60)
    tokens.revoke(token)
    tokens.revoke(token)  # twice is nothing
    tokens.revoke("not a token")
    for other in (token, "A" * 32, "", "short", "A" * 31 + "\x00", "A" * 33, "%" * 32):
        assert tokens.take(other) is None, other
    assert _rows(store) == 0


def test_an_expired_token_serves_nothing_and_expired_ones_are_swept(
    store: Stores, tokens: SqlTokens
) -> None:
    expired = [tokens.issue(10, 0.2) for _ in range(3)]
    live = tokens.issue(20, 60)
    # The database's clock decides (the test has no clock of its own to move).
    time.sleep(0.3)
    assert tokens.take(expired[0]) is None
    assert _rows(store) == 3  # the taken one is gone, used or not
    newer = tokens.issue(30, 60)  # an issue sweeps
    assert _rows(store) == 2
    assert tokens.sweep() == 0
    assert [tokens.take(t) for t in (*expired, live, newer)] == [
        None,
        None,
        None,
        (20, ""),
        (30, ""),
    ]


HOSTILE = [
    "o'brien",
    "'); DROP TABLE uplink_tokens; --",
    "%s %(name)s ? :name $1 {}",
    "ünïcödé ✓ 𝄞 \u202e",
    "line\nbreak\ttab\r",
]


@pytest.mark.parametrize("label", HOSTILE)
def test_a_label_is_data(tokens: SqlTokens, label: str) -> None:
    assert tokens.take(tokens.issue(1, 60, label)) == (1, label)


def test_a_labels_nul_is_written_out(tokens: SqlTokens) -> None:
    assert tokens.take(tokens.issue(1, 60, "device=a\x00b")) == (1, "device=a\\x00b")


@pytest.fixture(params=["sqlite", "postgresql"])
def replicas(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[Stores]]:
    """Four controllers' stores on one database."""
    if request.param == "sqlite":
        url = f"sqlite:{tmp_path / 'c.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    stores: list[Stores] = []
    try:
        for _ in range(4):
            stores.append(open_stores(url))
        yield stores
    finally:
        for s in stores:
            s.close()


def race(stores: list[Stores], act: Callable[[int, SqlTokens], R]) -> list[R]:
    """``act`` on each store's tokens at once, each in its own thread; answers in order."""
    barrier = threading.Barrier(len(stores))
    answers: list[R | BaseException | None] = [None] * len(stores)

    def run(n: int) -> None:
        tokens = SqlTokens(stores[n].sql)
        barrier.wait()
        try:
            answers[n] = act(n, tokens)
        except BaseException as exc:  # raised below, in the test's thread
            answers[n] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for answer in answers:
        if isinstance(answer, BaseException):
            raise answer
    return answers  # type: ignore[return-value]


def test_a_token_issued_on_one_controller_is_taken_on_another_once(
    replicas: list[Stores],
) -> None:
    issuer, taker, late = (SqlTokens(s.sql) for s in replicas[:3])
    token = issuer.issue(5_000_000, 60, "school=s1 device=p1")
    assert taker.take(token) == (5_000_000, "school=s1 device=p1")
    assert late.take(token) is None
    assert issuer.take(token) is None
    # A revoke on the issuer reaches the others too.
    revoked = issuer.issue(1, 60)
    issuer.revoke(revoked)
    assert taker.take(revoked) is None


def _taking(token: str) -> Callable[[int, SqlTokens], tuple[int, str] | None]:
    return lambda _, tokens: tokens.take(token)


def test_of_controllers_taking_one_token_at_once_exactly_one_has_it(
    replicas: list[Stores],
) -> None:
    issuer = SqlTokens(replicas[0].sql)
    for n in range(25):
        token = issuer.issue(1000 + n, 60, f"check {n}")
        taken = race(replicas, _taking(token))
        assert [t for t in taken if t is not None] == [(1000 + n, f"check {n}")], taken
    assert int(replicas[1].sql.read("SELECT COUNT(*) AS n FROM uplink_tokens")[0]["n"]) == 0


def test_controllers_issuing_and_sweeping_at_once_all_succeed(replicas: list[Stores]) -> None:
    # Expired rows for the sweeps to contend over: each issue sweeps them.
    seeding = SqlTokens(replicas[0].sql)
    for _ in range(200):
        seeding.issue(1, 0.05)
    time.sleep(0.2)
    issued = race(replicas, lambda n, tokens: [tokens.issue(n + 1, 60) for _ in range(20)])
    assert int(replicas[0].sql.read("SELECT COUNT(*) AS n FROM uplink_tokens")[0]["n"]) == 80
    taker = SqlTokens(replicas[3].sql)
    assert [taker.take(t) for n, ts in enumerate(issued) for t in ts] == [
        (n + 1, "") for n in range(4) for _ in range(20)
    ]
