"""The infrastructure in the store, on SQLite and PostgreSQL alike: inventory imports,
probes, host keys, and what devices see of the Wi-Fi."""

from __future__ import annotations

from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry

from controller.errors import StoreError
from controller.infra.metrics import InfraCollector
from controller.infra.store import InfraCensus, InventoryCounts
from controller.stores import Stores
from inventory.infra import (
    AccessPoint,
    HostKey,
    ProbeResult,
    ProbeTarget,
    Room,
    School,
    Server,
    TargetKind,
    UnknownBssid,
)
from tests.test_store_sqlite import ident

T0 = 1_800_000_000.0
AP1 = AccessPoint(
    "ap-1", "s1", "10.1.0.11", "r101", "2nd floor", "U6", "aa:bb:cc:00:00:01",
    ("aa:bb:cc:00:01:01", "aa:bb:cc:00:01:02"), "root", 22,
)  # fmt: skip
AP2 = AccessPoint("ap-2", "s1", "10.1.0.12", bssids=("aa:bb:cc:00:02:01",))
AP3 = AccessPoint("ap-3", "s2", "ap3.s2.example")
SRV1 = Server("srv-1", "s1", "10.1.0.2", "admin", 2222)
SRV2 = Server("srv-2", "s2", "10.2.0.2")
KEY_A = HostKey(
    "ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
)
KEY_B = HostKey(
    "ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5AAAAIBmxpAUeJGW7sFzt8Fc6oX6LTaYELTo8gkRiIh0qPHSp"
)


@pytest.fixture
def store(both_stores: Stores) -> Stores:
    both_stores.infra.save_inventory(
        [School("s1", "School 1"), School("s2")],
        [Room("s1", "r101")],
        [AP1, AP2, AP3],
        [SRV1, SRV2],
        T0,
    )
    return both_stores


def probe(kind: TargetKind, target_id: str, up: bool, at: float = T0, **kw: object) -> ProbeResult:
    base = ProbeResult(kind, target_id, up, "" if up else "connection refused", 0.01, at)
    return replace(base, **kw)  # type: ignore[arg-type]


def seen_by_devices(store: Stores, rows: list[tuple[str, str, float | None]], at: float) -> None:
    """What the ingest of the agents' Wi-Fi reports writes (device, BSSID, signal)."""
    for device_id, bssid, signal in rows:
        store.sql.write(
            "INSERT INTO device_wifi (device_id, bssid, signal_dbm, seen_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (device_id) DO UPDATE SET bssid = excluded.bssid, "
            "signal_dbm = excluded.signal_dbm, seen_at = excluded.seen_at",
            (device_id, bssid, signal, at),
        )
        store.sql.write(
            "INSERT INTO bssid_seen (bssid, seen_at) VALUES (?, ?) "
            "ON CONFLICT (bssid) DO UPDATE SET seen_at = excluded.seen_at",
            (bssid, at),
        )


def test_an_import_adds_then_changes_nothing_then_updates(both_stores: Stores) -> None:
    s = both_stores
    schools, rooms = [School("s1", "One")], [Room("s1", "r1"), Room("s1", "r2")]
    assert s.infra.save_inventory(schools, rooms, [AP1], [SRV1], T0) == InventoryCounts(5, 0, 0)
    assert s.infra.save_inventory(schools, rooms, [AP1], [SRV1], T0 + 1) == InventoryCounts(0, 0, 5)
    moved = replace(AP1, address="10.1.0.99", bssids=("aa:bb:cc:00:01:01", "aa:bb:cc:00:01:03"))
    renamed = [School("s1", "School One")]
    assert s.infra.save_inventory(renamed, [], [moved], [replace(SRV1, ssh_port=22)], T0 + 2) == (
        InventoryCounts(0, 3, 0)
    )
    rooms_kept = s.sql.read("SELECT school_id, room_id FROM rooms ORDER BY room_id")
    assert [(r["school_id"], r["room_id"]) for r in rooms_kept] == [("s1", "r1"), ("s1", "r2")]
    assert s.infra.known_schools(["s1", "s9"]) == {"s1"}
    assert s.infra.bssid_owners(["aa:bb:cc:00:01:02", "aa:bb:cc:00:01:03"]) == {
        "aa:bb:cc:00:01:03": "ap-1"
    }
    [status] = s.infra.list_access_points(None, None)
    assert status.access_point == moved


def test_a_bssid_of_another_access_point_stores_nothing(store: Stores) -> None:
    thief = replace(AP3, bssids=("aa:bb:cc:00:02:01",))
    # SQLite: "UNIQUE constraint failed"; PostgreSQL: "violates unique constraint".
    with pytest.raises(StoreError, match=r"(?i)unique"):
        store.infra.save_inventory([School("s3")], [], [thief], [], T0 + 1)
    assert store.infra.known_schools(["s3"]) == set()
    assert store.infra.bssid_owners(["aa:bb:cc:00:02:01"]) == {"aa:bb:cc:00:02:01": "ap-2"}


def test_target_schools(store: Stores) -> None:
    assert store.infra.target_schools(TargetKind.AP, ["ap-1", "ap-3", "nope"]) == {
        "ap-1": "s1",
        "ap-3": "s2",
    }
    assert store.infra.target_schools(TargetKind.SERVER, ["srv-2"]) == {"srv-2": "s2"}


def test_access_points_show_their_probe_and_the_view_from_below(store: Stores) -> None:
    seen_by_devices(
        store,
        [("p1", "aa:bb:cc:00:01:01", -50), ("p2", "aa:bb:cc:00:01:02", -70),
         ("p3", "aa:bb:cc:00:01:02", -62), ("p4", "aa:bb:cc:00:01:01", None),
         ("p5", "ff:ff:ff:00:00:01", -40)],
        T0 - 10,
    )  # fmt: skip
    store.sql.write(
        "UPDATE bssid_seen SET seen_at = ? WHERE bssid = ?", (T0 - 5, "aa:bb:cc:00:01:02")
    )
    store.infra.record_probes(
        [probe(TargetKind.AP, "ap-1", True), probe(TargetKind.AP, "ap-2", False)]
    )
    aps = {a.target.target_id: a for a in store.infra.list_access_points(None, None)}
    assert list(aps) == ["ap-1", "ap-2", "ap-3"]
    one = aps["ap-1"]
    assert (one.devices, one.median_signal_dbm, one.last_seen_by_device) == (4, -62, T0 - 5)
    assert one.latest is not None and one.latest.up
    assert one.access_point == AP1
    assert one.target == ProbeTarget(TargetKind.AP, "ap-1", "s1", "10.1.0.11", "root", 22)
    two = aps["ap-2"]
    assert (two.devices, two.median_signal_dbm, two.last_seen_by_device) == (0, None, None)
    assert two.latest is not None and two.latest.reason == "connection refused"
    assert aps["ap-3"].latest is None

    assert [a.target.target_id for a in store.infra.list_access_points("s2", None)] == ["ap-3"]
    assert [
        a.target.target_id for a in store.infra.list_access_points(None, frozenset({"s2"}))
    ] == ["ap-3"]
    assert [
        a.target.target_id for a in store.infra.list_access_points(None, None, down_only=True)
    ] == ["ap-2"]
    page = store.infra.list_access_points(None, None, after_id="ap-1", limit=1)
    assert [a.target.target_id for a in page] == ["ap-2"]


def test_an_older_probe_does_not_replace_a_newer_one(store: Stores) -> None:
    store.infra.record_probes([probe(TargetKind.SERVER, "srv-1", True, T0, facts={"load1": 0.5})])
    store.infra.record_probes([probe(TargetKind.SERVER, "srv-1", False, T0 - 60)])
    server = store.infra.get_server("srv-1")
    assert server is not None and server.latest is not None
    assert (server.latest.up, server.latest.facts) == (True, {"load1": 0.5})
    assert store.infra.get_server("nope") is None
    assert [s.target.target_id for s in store.infra.list_servers("s2", None)] == ["srv-2"]


def test_a_seen_key_is_pinned_only_by_trust(store: Stores) -> None:
    assert store.infra.trust_host_key(TargetKind.SERVER, "srv-1", T0) is None, "nothing seen yet"
    store.infra.record_probes(
        [probe(TargetKind.SERVER, "srv-1", True, reason="host key not trusted", seen_key=KEY_A)]
    )
    targets = {t.target_id: t for t in store.infra.probe_targets()}
    assert set(targets) == {"ap-1", "ap-2", "ap-3", "srv-1", "srv-2"}
    assert targets["srv-1"].pinned_key is None
    server = store.infra.get_server("srv-1")
    assert server is not None and server.latest is not None
    assert server.latest.seen_key == KEY_A and server.target.pinned_key is None

    assert store.infra.trust_host_key(TargetKind.SERVER, "srv-1", T0 + 1, expected=KEY_B) is None
    assert store.infra.trust_host_key(TargetKind.SERVER, "srv-1", T0 + 1, expected=KEY_A) == KEY_A
    pinned = {t.target_id: t.pinned_key for t in store.infra.probe_targets()}
    assert pinned["srv-1"] == KEY_A and pinned["srv-2"] is None
    server = store.infra.get_server("srv-1")
    assert server is not None and server.latest is not None and server.latest.seen_key is None

    # The key changes: seen, not trusted, until trust pins the new one.
    store.infra.record_probes(
        [
            probe(
                TargetKind.SERVER, "srv-1", False, T0 + 2, reason="host key changed", seen_key=KEY_B
            )
        ]
    )
    server = store.infra.get_server("srv-1")
    assert server is not None and server.latest is not None
    assert (server.target.pinned_key, server.latest.seen_key) == (KEY_A, KEY_B)
    # It changes back: nothing is left to trust.
    store.infra.record_probes([probe(TargetKind.SERVER, "srv-1", True, T0 + 3, seen_key=KEY_A)])
    assert store.infra.trust_host_key(TargetKind.SERVER, "srv-1", T0 + 4) is None
    assert {t.target_id: t.pinned_key for t in store.infra.probe_targets()}["srv-1"] == KEY_A


def test_counts_by_school_kind_and_state(store: Stores) -> None:
    seen_by_devices(store, [("p1", "aa:bb:cc:00:01:01", -50)], T0 - 3600)
    seen_by_devices(store, [("p2", "aa:bb:cc:00:02:01", -50)], T0 - 3 * 86400)
    store.infra.record_probes(
        [probe(TargetKind.AP, "ap-1", True), probe(TargetKind.AP, "ap-2", False),
         probe(TargetKind.SERVER, "srv-2", False)]
    )  # fmt: skip
    assert store.infra.infra_census(T0 - 86400) == [
        InfraCensus("s1", TargetKind.AP, 1, 1, 0, 1),
        InfraCensus("s2", TargetKind.AP, 0, 0, 1, 1),
        InfraCensus("s1", TargetKind.SERVER, 0, 0, 1, 0),
        InfraCensus("s2", TargetKind.SERVER, 0, 1, 0, 0),
    ]
    assert store.infra.infra_counts() == [
        ("s1", TargetKind.AP, 1, 1),
        ("s2", TargetKind.AP, 0, 0),
        ("s1", TargetKind.SERVER, 0, 0),
        ("s2", TargetKind.SERVER, 0, 1),
    ]


def test_the_gauges_grow_with_schools_never_with_access_points(store: Stores) -> None:
    registry = CollectorRegistry()
    registry.register(InfraCollector(store.infra, store.infra.school_ids, now=lambda: T0))
    store.infra.record_probes(
        [probe(TargetKind.AP, "ap-2", False), probe(TargetKind.SERVER, "srv-1", True)]
    )

    def value(name: str, school: str, state: str | None = None) -> float | None:
        labels = {"school": school} if state is None else {"school": school, "state": state}
        return registry.get_sample_value(f"schoolfleet_{name}", labels)

    def series() -> set[tuple[str, tuple[tuple[str, str], ...]]]:
        return {
            (s.name, tuple(sorted(s.labels.items())))
            for family in registry.collect()
            for s in family.samples
        }

    before = series()
    assert len(before) == 2 * 3 + 2 * 3 + 2 + 2, (
        "per school: 3 AP states, 3 server states, unseen, devices on unknown BSSIDs"
    )
    assert (value("access_points", "s1", "down"), value("access_points", "s1", "unknown")) == (1, 1)
    assert value("servers", "s1", "up") == 1
    assert value("access_points_unseen", "s2") == 1
    many = [AccessPoint(f"ap-x{n}", "s1", f"10.9.{n // 250}.{n % 250 + 1}") for n in range(500)]
    store.infra.save_inventory([], [], many, [], T0)
    assert series() == before
    assert value("access_points", "s1", "unknown") == 501


def test_bssids_no_access_point_has_are_listed_by_the_devices_school(
    store: Stores,
) -> None:
    for n, (device, school) in enumerate(
        [("p1", "s1"), ("p5", "s1"), ("p6", "s1"), ("p7", "s2"), ("p8", "s2")]
    ):
        store.devices.device_connected(ident(device, school), n + 1, 90, T0 - 20)
    seen_by_devices(
        store,
        [("p1", "aa:bb:cc:00:01:01", -50), ("p5", "ff:ff:ff:00:00:01", -40),
         ("p7", "ff:ff:ff:00:00:01", None), ("p8", "ff:ff:ff:00:00:02", -70)],
        T0 - 10,
    )  # fmt: skip
    seen_by_devices(store, [("p6", "ff:ff:ff:00:00:01", -50)], T0 - 5)
    # A report from a device the store has no row of is no school's.
    seen_by_devices(store, [("ghost", "ff:ff:ff:00:00:03", -30)], T0 - 5)
    s2 = [
        UnknownBssid("s2", "ff:ff:ff:00:00:01", 1, None, T0 - 10),
        UnknownBssid("s2", "ff:ff:ff:00:00:02", 1, -70, T0 - 10),
    ]
    assert store.infra.unknown_bssids(None) == [
        UnknownBssid("s1", "ff:ff:ff:00:00:01", 2, -45, T0 - 5),
        *s2,
    ]
    assert store.infra.unknown_bssids(frozenset({"s2", "s9"})) == s2
    assert store.infra.unknown_bssids(frozenset()) == []

    registry = CollectorRegistry()
    registry.register(InfraCollector(store.infra, store.infra.school_ids, now=lambda: T0))

    def gauge(school: str) -> float | None:
        return registry.get_sample_value(
            "schoolfleet_devices_on_unknown_bssids", {"school": school}
        )

    assert (gauge("s1"), gauge("s2")) == (2, 2)

    # The inventory gains the access point: its BSSID is no longer unknown.
    store.infra.save_inventory([], [], [replace(AP3, bssids=("ff:ff:ff:00:00:01",))], [], T0)
    assert store.infra.unknown_bssids(None) == [s2[1]]
    assert (gauge("s1"), gauge("s2")) == (0, 1), "0 for a school with access points"


def test_a_fingerprint_is_what_ssh_keygen_shows() -> None:
    assert KEY_A.fingerprint().startswith("SHA256:") and len(KEY_A.fingerprint()) == 50
    assert HostKey("ssh-ed25519", "not base64!").fingerprint() == "SHA256:(not base64)"
