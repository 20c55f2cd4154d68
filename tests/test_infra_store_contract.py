"""The infrastructure store's contract on both databases: exact values read back, ids
in code point order, hostile values kept as data (a row no database could keep
refused alike, a probed target's NUL written out), and on PostgreSQL several
controllers importing, probing and trusting at once."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from controller.errors import StoreError
from controller.infra.sql_rows import ID_CHARS
from controller.infra.store import InfraCensus, InventoryCounts
from controller.stores import Stores, open_stores
from inventory.infra import (
    AccessPoint,
    HostKey,
    ProbeResult,
    ProbeTarget,
    Room,
    School,
    Server,
    TargetKind,
    TargetStatus,
    UnknownBssid,
)
from tests.test_store_sqlite import ident
from tests.test_uplink_store_contract import race

T0 = 1_800_000_000.123456
AP, SERVER = TargetKind.AP, TargetKind.SERVER
KEY = HostKey("ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl")


@pytest.fixture
def store(both_stores: Stores) -> Stores:
    return both_stores


def probe(kind: TargetKind, target_id: str, up: bool, at: float = T0, **kw: object) -> ProbeResult:
    base = ProbeResult(kind, target_id, up, "" if up else "connection refused", 0.25, at)
    return replace(base, **kw)  # type: ignore[arg-type]


Rows = tuple[list[School], list[Room], list[AccessPoint], list[Server]]


def save(store: Stores, rows: Rows, now: float = T0) -> InventoryCounts:
    return store.infra.save_inventory(rows[0], rows[1], rows[2], rows[3], now)


def count(store: Stores, table: str) -> int:
    return int(store.sql.read(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"])


def test_an_inventory_and_its_probes_are_read_back_exactly(store: Stores) -> None:
    ap = AccessPoint(
        "ap-1", "s1", "10.1.0.11", "r1", "hall", "U6", "aa:bb:cc:00:00:01",
        ("aa:bb:cc:00:01:01", "aa:bb:cc:00:01:02"), "root", 2222,
    )  # fmt: skip
    server = Server("srv-1", "s1", "10.1.0.2", "admin", 22)
    counts = store.infra.save_inventory(
        [School("s1", "One")], [Room("s1", "r1")], [ap], [server], T0
    )
    assert counts == InventoryCounts(4, 0, 0)
    store.infra.record_probes(
        [
            probe(AP, "ap-1", True, T0 + 0.000001, facts={"load1": 0.125, "clients": 17.0}),
            probe(SERVER, "srv-1", False, T0 + 0.000002, reason="host key changed", seen_key=KEY),
        ]
    )
    [status] = store.infra.list_access_points(None, None)
    assert status == TargetStatus(
        target=ProbeTarget(AP, "ap-1", "s1", "10.1.0.11", "root", 2222),
        latest=ProbeResult(
            AP, "ap-1", True, "", 0.25, T0 + 0.000001, {"clients": 17.0, "load1": 0.125}
        ),
        access_point=ap,
    )
    assert store.infra.get_server("srv-1") == TargetStatus(
        target=ProbeTarget(SERVER, "srv-1", "s1", "10.1.0.2", "admin", 22),
        latest=ProbeResult(
            SERVER, "srv-1", False, "host key changed", 0.25, T0 + 0.000002, {}, KEY
        ),
    )
    assert store.infra.trust_host_key(SERVER, "srv-1", T0 + 1) == KEY
    assert store.infra.trust_host_key(SERVER, "srv-1", T0 + 2) is None, "pinned once"
    assert store.infra.probe_targets() == [
        ProbeTarget(AP, "ap-1", "s1", "10.1.0.11", "root", 2222),
        ProbeTarget(SERVER, "srv-1", "s1", "10.1.0.2", "admin", 22, KEY),
    ]
    assert store.infra.known_schools(["s1", "s2", "s1"]) == {"s1"}
    assert store.infra.target_schools(AP, ["ap-1", "srv-1"]) == {"ap-1": "s1"}
    assert store.infra.bssid_owners(["aa:bb:cc:00:01:01", "x"]) == {"aa:bb:cc:00:01:01": "ap-1"}
    assert store.infra.infra_census(T0) == [
        InfraCensus("s1", AP, 1, 0, 0, 1),
        InfraCensus("s1", SERVER, 0, 1, 0, 0),
    ]
    assert store.infra.save_inventory(
        [School("s1", "One")], [Room("s1", "r1")], [ap], [server], T0
    ) == (InventoryCounts(0, 0, 4))
    assert (count(store, "ap_bssids"), count(store, "host_keys")) == (2, 1)


NAMES = ["b", "a", "B", "a-2", "a.1", "Z9", "é", "ä"]
ORDERED = ["B", "Z9", "a", "a-2", "a.1", "b", "ä", "é"]


def test_ids_are_in_code_point_order(store: Stores) -> None:
    assert sorted(NAMES) == ORDERED
    store.infra.save_inventory(
        [School(n) for n in NAMES],
        [],
        [AccessPoint(n, n, "10.0.0.1", bssids=(f"b-{n}",)) for n in NAMES],
        [Server(n, n, "10.0.0.2") for n in NAMES],
        T0,
    )
    assert store.infra.school_ids() == ORDERED
    assert [a.target.target_id for a in store.infra.list_access_points(None, None)] == ORDERED
    page = store.infra.list_access_points(None, None, after_id="B", limit=3)
    assert [a.target.target_id for a in page] == ["Z9", "a", "a-2"]
    page = store.infra.list_access_points(None, None, after_id="b", limit=3)
    assert [a.target.target_id for a in page] == ["ä", "é"]
    assert [s.target.target_id for s in store.infra.list_servers(None, None)] == ORDERED
    assert [t.target_id for t in store.infra.probe_targets()] == ORDERED + ORDERED
    assert [c.school_id for c in store.infra.infra_census(T0)] == ORDERED + ORDERED
    for n, name in enumerate(NAMES):
        store.devices.device_connected(ident(f"p{n}", name), 1, 90, T0)
        store.sql.write(
            "INSERT INTO device_wifi (device_id, bssid, signal_dbm, seen_at) VALUES (?, ?, ?, ?)",
            (f"p{n}", f"x-{name}", -50.0, T0),
        )
    assert store.infra.unknown_bssids(None) == [
        UnknownBssid(n, f"x-{n}", 1, -50.0, T0) for n in ORDERED
    ]


HOSTILE = [
    "o'brien",
    'say "hi"',
    "'); DROP TABLE access_points; --",
    "x' OR '1'='1",
    "%s %(name)s ? :name $1 {}",
    "back\\slash \\x00",
    "line\nbreak\ttab\r",
    "ünïcödé ✓ 𝄞 \u202e",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_are_data(store: Stores, value: str) -> None:
    ap = AccessPoint(value, value, value, value, value, value, value, (value,), value, 22)
    server = Server(value, value, value, value, 22)
    assert store.infra.save_inventory(
        [School(value, value)], [Room(value, value)], [ap], [server], T0
    ) == InventoryCounts(4, 0, 0)
    key = HostKey(value, value)
    store.infra.record_probes(
        [
            probe(AP, value, False, reason=value, facts={value: 1.5}),
            probe(SERVER, value, True, reason=value, seen_key=key),
        ]
    )
    [status] = store.infra.list_access_points(value, frozenset({value}))
    assert status.access_point == ap
    assert status.latest == probe(AP, value, False, reason=value, facts={value: 1.5})
    found = store.infra.get_server(value)
    assert found is not None and found.latest == probe(
        SERVER, value, True, reason=value, seen_key=key
    )
    assert store.infra.trust_host_key(SERVER, value, T0, expected=key) == key
    assert store.infra.known_schools([value]) == {value}
    assert store.infra.bssid_owners([value]) == {value: value}
    assert store.infra.school_ids() == [value]
    assert store.infra.save_inventory(
        [School(value, value)], [Room(value, value)], [ap], [server], T0 + 1
    ) == InventoryCounts(0, 0, 4)


def test_a_row_with_a_nul_is_refused_and_a_probes_nul_written_out(store: Stores) -> None:
    good: Rows = [School("s1")], [Room("s1", "r1")], [AccessPoint("ap-1", "s1", "10.0.0.1")], []
    bad: list[tuple[Rows, str]] = [
        (([School("s2", "a\x00b")], [], [], []), "name"),
        (([], [Room("s1", "r\x00")], [], []), "room_id"),
        (([], [], [AccessPoint("ap-2", "s1", "10.0.0.2", location="x\x00")], []), "location"),
        (([], [], [AccessPoint("ap-2", "s1", "h", bssids=("b\x00",))], []), "bssids"),
        (([], [], [], [Server("srv\x00", "s1", "10.0.0.3")]), "server_id"),
    ]
    for rows, field in bad:
        with_good: Rows = (good[0] + rows[0], good[1] + rows[1], good[2] + rows[2], rows[3])
        with pytest.raises(StoreError, match=f"a NUL character in {field} cannot be stored"):
            save(store, with_good)
    assert store.infra.school_ids() == [], "nothing of a refused import is stored"
    save(store, good)
    store.infra.record_probes(
        [
            probe(AP, "ap-1", False, reason="banner \x00 here"),
            probe(AP, "ap\x00other", True),
            probe(SERVER, "srv-9", True, seen_key=HostKey("ssh-rsa", "AA\x00")),
        ]
    )
    [ap] = store.infra.list_access_points(None, None)
    assert ap.latest is not None and ap.latest.reason == "banner \\x00 here"
    assert count(store, "probe_results") == 2, "the result for no possible target is left out"
    assert store.infra.trust_host_key(SERVER, "srv-9", T0) == HostKey("ssh-rsa", "AA\\x00")
    assert store.infra.known_schools(["s1", "s1\x00"]) == {"s1"}
    assert store.infra.target_schools(AP, ["ap-1\x00"]) == {}
    assert store.infra.bssid_owners(["\x00"]) == {}
    assert store.infra.list_access_points("s1\x00", None) == []
    assert [
        a.target.target_id for a in store.infra.list_access_points(None, frozenset({"s1", "\x00"}))
    ] == ["ap-1"]
    assert [
        a.target.target_id for a in store.infra.list_access_points(None, None, after_id="ap-\x00")
    ] == ["ap-1"]
    assert store.infra.list_access_points(None, None, after_id="ap-1\x00") == []
    assert store.infra.list_servers("\x00", None) == []
    assert store.infra.get_server("srv\x00") is None
    assert store.infra.trust_host_key(AP, "ap\x00other", T0) is None
    assert store.infra.unknown_bssids(frozenset({"s1\x00"})) == []


def test_long_values_are_kept_or_refused_the_same_way(store: Stores) -> None:
    # Random-looking, so that PostgreSQL cannot compress it into an index row.
    long = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(100_000))
    at_limit = long[:ID_CHARS]
    ap = AccessPoint(at_limit, at_limit, long, at_limit, long, long, long, (at_limit,), long)
    server = Server(at_limit, at_limit, long, long)
    store.infra.save_inventory(
        [School(at_limit, long)], [Room(at_limit, at_limit)], [ap], [server], T0
    )
    store.infra.record_probes(
        [probe(SERVER, at_limit, False, reason=long, seen_key=HostKey(long, long))]
    )
    [status] = store.infra.list_access_points(at_limit, None)
    assert status.access_point == ap
    found = store.infra.get_server(at_limit)
    assert found is not None and found.target.address == long
    assert found.latest is not None and found.latest.reason == long
    assert store.infra.trust_host_key(SERVER, at_limit, T0) == HostKey(long, long)
    over = long[: ID_CHARS + 1]
    too_long: list[tuple[Rows, str]] = [
        (([School(over)], [], [], []), "school_id"),
        (([], [Room("s", over)], [], []), "room_id"),
        (([], [], [AccessPoint("a", "s", "h", bssids=(over,))], []), "bssids"),
        (([], [], [], [Server(over, "s", "h")]), "server_id"),
    ]
    for rows, field in too_long:
        with pytest.raises(StoreError, match=f"{field} is over {ID_CHARS} characters"):
            save(store, rows)
    assert store.infra.known_schools([over, long]) == set()
    assert store.infra.get_server(long) is None
    store.infra.record_probes([probe(AP, long, True)])
    assert count(store, "probe_results") == 1


@pytest.fixture
def replicas(pg_url: str) -> Iterator[list[Stores]]:
    """Four controllers' stores on one PostgreSQL database."""
    stores: list[Stores] = []
    try:
        for _ in range(4):
            stores.append(open_stores(pg_url))
        yield stores
    finally:
        for s in stores:
            s.close()


def _inventory(prefix: str, version: int) -> Rows:
    ids = [f"{prefix}{n:02}" for n in range(10)]
    return (
        [School(i, f"School {i} v{version}") for i in ids],
        [Room(i, "r1") for i in ids],
        [
            AccessPoint(f"ap-{i}", i, f"10.{version}.0.1", bssids=(f"{i}:0", f"{i}:{version}"))
            for i in ids
        ],
        [Server(f"srv-{i}", i, "10.0.0.2", ssh_port=22 + version) for i in ids],
    )


def test_controllers_importing_one_inventory_at_once_add_each_row_once(
    replicas: list[Stores],
) -> None:
    def load(prefix: str, version: int) -> list[InventoryCounts]:
        rows = _inventory(prefix, version)

        # Half of them give the rows in the opposite order: no deadlock either way.
        def one(n: int, s: Stores) -> InventoryCounts:
            if n % 2:
                return save(
                    s, (rows[0][::-1], rows[1][::-1], rows[2][::-1], rows[3][::-1]), T0 + version
                )
            return save(s, rows, T0 + version)

        return race(replicas, one)

    def total(counts: list[InventoryCounts]) -> InventoryCounts:
        return InventoryCounts(
            *(sum(getattr(c, f) for c in counts) for f in InventoryCounts.__slots__)
        )

    for prefix in ("a", "b", "c", "d", "e"):
        # 40 rows each: added once, found unchanged by the three others.
        assert total(load(prefix, 1)) == InventoryCounts(40, 0, 120), prefix
        # 30 of them changed (rooms have nothing to change): updated once.
        assert total(load(prefix, 2)) == InventoryCounts(0, 30, 130), prefix
    one = replicas[0]
    tables = ("schools", "rooms", "access_points", "ap_bssids", "servers")
    assert [count(one, t) for t in tables] == [50, 50, 50, 100, 50]
    ap = one.infra.list_access_points("c03", None)[0].access_point
    assert ap == AccessPoint("ap-c03", "c03", "10.2.0.1", bssids=("c03:0", "c03:2"))


def test_probes_recorded_by_controllers_at_once_keep_the_newest(replicas: list[Stores]) -> None:
    aps = [AccessPoint(f"ap-{n:02}", "s1", "10.0.0.1") for n in range(20)]
    replicas[0].infra.save_inventory([School("s1")], [], aps, [], T0)

    def record(n: int, s: Stores) -> None:
        results = [probe(AP, a.ap_id, n % 2 == 0, T0 + n, facts={"n": n}) for a in aps]
        # Opposite orders: without a common lock order two batches deadlock.
        s.infra.record_probes(results[::-1] if n % 2 else results)

    for _ in range(5):
        race(replicas, record)
        latest = [a.latest for a in replicas[0].infra.list_access_points(None, None)]
        assert {(p.up, p.probed_at, p.facts["n"]) for p in latest if p} == {(False, T0 + 3, 3)}
        assert len(latest) == 20


def test_a_seen_key_trusted_by_controllers_at_once_is_pinned_once(replicas: list[Stores]) -> None:
    servers = [Server(f"srv-{n:02}", "s1", "10.0.0.2") for n in range(20)]
    replicas[0].infra.save_inventory([School("s1")], [], [], servers, T0)
    replicas[0].infra.record_probes(
        [probe(SERVER, s.server_id, True, seen_key=KEY) for s in servers]
    )

    def trust(server_id: str) -> list[HostKey | None]:
        return race(replicas, lambda n, r: r.infra.trust_host_key(SERVER, server_id, T0 + n))

    for s in servers:
        pinned = trust(s.server_id)
        assert pinned.count(KEY) == 1 and pinned.count(None) == 3, pinned
    assert {t.pinned_key for t in replicas[0].infra.probe_targets()} == {KEY}
    assert count(replicas[0], "host_keys") == 20
