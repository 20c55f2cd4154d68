"""The uplink endpoint, a real server on port 0 taking tokens from a real store, and
the agent's fetch against it: one transfer per token, the granted size, refusals, the
deadline, a store that fails."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.uplink import MAX_BYTES, fetch, refusal, url_for
from controller.errors import ConfigError
from controller.stores import Stores, sqlite_stores
from controller.uplink.endpoint import PATH_PREFIX, UplinkServer, serve
from controller.uplink.sql_tokens import SqlTokens
from controller.uplink.tokens import MAX_BYTES as SERVER_MAX


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Stores]:
    s = sqlite_stores(tmp_path / "c.db")
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def tokens(store: Stores) -> SqlTokens:
    return SqlTokens(store.sql)


@pytest.fixture
def endpoint(tokens: SqlTokens) -> Iterator[tuple[UplinkServer, SqlTokens]]:
    server, thread = serve("127.0.0.1:0", tokens)
    try:
        yield server, tokens
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _get(server: UplinkServer, path: str) -> tuple[int, bytes]:
    status, body, _ = _ask(server, path)
    return status, body


def _ask(server: UplinkServer, path: str) -> tuple[int, bytes, str]:
    """The status, the body and the reason the status line gives."""
    url = f"http://127.0.0.1:{server.port}{path}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=10) as response:
            return response.status, response.read(), response.reason
    except urllib.error.HTTPError as exc:
        return exc.code, b"", exc.reason


def test_a_token_serves_its_size_once(endpoint: tuple[UplinkServer, SqlTokens]) -> None:
    server, tokens = endpoint
    token = tokens.issue(3 * 1024 * 1024 + 5, ttl=60, label="school=s1")
    status, body = _get(server, PATH_PREFIX + token + "?bytes=99")
    # The size is the token's, whatever the request asks; the payload does not compress.
    assert status == 200 and len(body) == 3 * 1024 * 1024 + 5
    assert len(set(body[:4096])) > 200
    assert _get(server, PATH_PREFIX + token)[0] == 404


def test_unknown_expired_and_revoked_tokens_and_other_paths_get_404(
    endpoint: tuple[UplinkServer, SqlTokens],
) -> None:
    server, tokens = endpoint
    expired = tokens.issue(10, ttl=0.2)
    revoked = tokens.issue(10, ttl=60)
    tokens.revoke(revoked)
    time.sleep(0.3)  # by the database's clock: no clock of the test's to move
    unknown = "A" * 32
    for path in (
        PATH_PREFIX + expired,
        PATH_PREFIX + revoked,
        PATH_PREFIX + unknown,
        PATH_PREFIX + "nope",
        "/",
        "/x",
    ):
        assert _ask(server, path) == (
            404,
            b"",
            "no such uplink check (unknown, used or expired)",
        ), path


def test_a_grant_is_bounded(tokens: SqlTokens) -> None:
    with pytest.raises(ValueError, match="1 to 100000000 bytes, not 100000001"):
        tokens.issue(SERVER_MAX + 1, ttl=5)
    with pytest.raises(ValueError, match="not 0"):
        tokens.issue(0, ttl=5)
    for ttl in (0.0, -1.0, float("nan"), 86_401.0):
        with pytest.raises(ValueError, match="an uplink token lives 0 to 86400 seconds"):
            tokens.issue(10, ttl=ttl)
    assert MAX_BYTES == SERVER_MAX  # the agents' cap is the controller's


def test_a_taken_port_is_a_config_error(
    endpoint: tuple[UplinkServer, SqlTokens], tokens: SqlTokens
) -> None:
    server, _ = endpoint
    with pytest.raises(ConfigError, match=r"uplink_listen 127\.0\.0\.1:"):
        UplinkServer(f"127.0.0.1:{server.port}", tokens)


def test_a_store_that_fails_is_answered_503_and_the_agent_says_so(
    endpoint: tuple[UplinkServer, SqlTokens], store: Stores
) -> None:
    server, tokens = endpoint
    token = tokens.issue(10, ttl=60)
    store.sql.write("DROP TABLE uplink_tokens")
    expected = "the controller's store is unavailable: no uplink check now"
    assert _ask(server, PATH_PREFIX + token) == (503, b"", expected)
    got = fetch(f"http://127.0.0.1:{server.port}{PATH_PREFIX}{token}", 10, 5.0, threading.Event())
    assert got.received == 0 and got.error == f"the controller answered 503 {expected}"


def test_the_agent_fetches_the_whole_payload_and_times_it(
    endpoint: tuple[UplinkServer, SqlTokens],
) -> None:
    server, tokens = endpoint
    token = tokens.issue(5_000_000, ttl=60)
    url = url_for("127.0.0.1:7443", server.port, PATH_PREFIX + token)
    assert url == f"http://127.0.0.1:{server.port}{PATH_PREFIX}{token}"
    got = fetch(url, 5_000_000, 30.0, threading.Event())
    assert got.error == "" and not got.cut and got.received == 5_000_000 and got.seconds > 0
    again = fetch(url, 5_000_000, 30.0, threading.Event())
    assert again.error == (
        "the controller answered 404 no such uplink check (unknown, used or expired)"
    )


def test_the_agent_measures_what_arrived_when_the_timeout_cuts_the_transfer(
    endpoint: tuple[UplinkServer, SqlTokens],
) -> None:
    server, tokens = endpoint
    token = tokens.issue(50_000_000, ttl=60)
    ticks = iter(range(10_000))

    def slow_clock() -> float:
        return float(next(ticks))  # one second per look: the deadline comes after 10 reads

    url = f"http://127.0.0.1:{server.port}{PATH_PREFIX}{token}"
    got = fetch(url, 50_000_000, 10.0, threading.Event(), slow_clock)
    assert got.cut and got.error == "" and 0 < got.received < 50_000_000


def test_the_agent_reports_a_controller_it_cannot_reach() -> None:
    got = fetch("http://127.0.0.1:9/uplink/abc", 100, 2.0, threading.Event())
    assert got.received == 0 and "refused" in got.error.lower()


def test_the_agent_refuses_orders_it_should_not_carry_out() -> None:
    assert refusal(7446, "/uplink/AbC-_9", 1000, 60) is None
    assert refusal(0, "/uplink/a", 10, 60)
    assert refusal(7446, "/metrics", 10, 60)
    assert refusal(7446, "/uplink/a/../../etc", 10, 60)
    assert refusal(7446, "/uplink/a@evil.example/", 10, 60)
    assert refusal(7446, "/uplink/a", MAX_BYTES + 1, 60)
    assert refusal(7446, "/uplink/a", 10, 0)
    assert refusal(7446, "/uplink/a", 10, 601)
    # The host is the controller's own, IPv6 and names included; never from the order.
    assert url_for("[fd00::1]:7443", 7446, "/uplink/a") == "http://[fd00::1]:7446/uplink/a"
    assert url_for("ctl.example:7443", 80, "/uplink/a") == "http://ctl.example:80/uplink/a"
