"""A rollout's selector is resolved by the store in one query, with the same answer as
the selector's own rule (``Selector.matches``) applied to every device: schools, rooms,
kinds, OS versions, ids and labels, within a caller's schools; hostile values are data.
On both databases."""

from __future__ import annotations

import pytest

from controller.fleet.store import DeviceQuery, SelectedDevice
from controller.store.rows import HeartbeatRow
from controller.stores import Stores
from inventory.model import DeviceIdentity, DeviceKind, DeviceStatus, Health, OsInfo
from inventory.rollouts import parse_selector

T0 = 1_800_000_000.0
KINDS = (DeviceKind.PANEL, DeviceKind.LAPTOP, DeviceKind.MONOBLOCK)
SELECTORS = (
    "school=s1",
    "school=s1|s3",
    "school=s2,kind=laptop",
    "room=r2",
    "kind=panel|monoblock,room=r1",
    "os=12.1",
    "os=12.0|13.0,school=s1",
    "device=d03|d07|d99",
    "label.grade=5",
    "label.grade=5|7,label.wing=north",
    "label.wing=south,kind=panel",
    "label.missing=x",
    "os=' OR 1=1 --",
    "label.grade=5') OR ('1'='1",
    "room=r1,school=s1,kind=laptop,os=12.1,label.grade=7",
)


@pytest.fixture
def store(both_stores: Stores) -> Stores:
    s = both_stores
    for n in range(24):
        labels = (("grade", str(5 + n % 3)),) + (
            (("wing", "north"),) if n % 2 else (("wing", "south"),)
        )
        identity = DeviceIdentity(
            f"d{n:02d}",
            KINDS[n % 3],
            f"s{1 + n % 3}",
            f"r{1 + n % 2}",
            "host",
            "0.1",
            # Every fifth device has reported no OS (an old agent).
            os=None if n % 5 == 0 else OsInfo("M OS", ("12.1", "12.0", "13.0")[n % 3], "6.1", T0),
            labels=labels if n % 4 else (),
        )
        s.devices.device_connected(identity, n + 1, 90, T0)
        if n % 2:
            s.devices.record_messages(
                [HeartbeatRow(identity.device_id, 1, T0, Health(T0, 1, 1, 1, 1, 0, 0, 0))]
            )
    return s


def by_the_rule(store: Stores, text: str, scope: frozenset[str] | None) -> list[SelectedDevice]:
    selector = parse_selector(text)
    every = store.devices.list_devices(DeviceQuery(limit=1000), T0 + 1)
    return [
        SelectedDevice(d.identity.device_id, d.identity.school_id, d.status)
        for d in every
        if (scope is None or d.identity.school_id in scope)
        and selector.matches(
            device_id=d.identity.device_id,
            school_id=d.identity.school_id,
            room_id=d.identity.room_id,
            kind=d.identity.kind,
            os_version=d.identity.os.version if d.identity.os is not None else None,
            labels=dict(d.identity.labels),
        )
    ]


@pytest.mark.parametrize("text", SELECTORS)
def test_the_store_selects_what_the_selector_s_rule_selects(store: Stores, text: str) -> None:
    for scope in (None, frozenset({"s1"}), frozenset({"s2", "s3"}), frozenset()):
        selected = store.devices.select_devices(parse_selector(text), scope, T0 + 1)
        assert selected == by_the_rule(store, text, scope), (text, scope)


def test_the_selection_is_exact_and_says_who_is_online(store: Stores) -> None:
    selected = store.devices.select_devices(parse_selector("school=s2,kind=laptop"), None, T0 + 1)
    # d01, d04, ...: school s2 is n % 3 == 1, and so is kind laptop.
    assert [d.device_id for d in selected] == [f"d{n:02d}" for n in range(1, 24, 3)]
    online = [d.device_id for d in selected if d.status is DeviceStatus.ONLINE]
    assert online == [f"d{n:02d}" for n in range(1, 24, 3) if n % 2]
    hostile = store.devices.select_devices(parse_selector("label.grade=5') OR ('1'='1"), None, T0)
    assert hostile == []


def test_records_by_id_leave_unknown_ids_out(store: Stores) -> None:
    found = store.devices.devices_by_id(["d05", "d01", "nope", "d05"], T0 + 1)
    assert [d.identity.device_id for d in found] == ["d01", "d05"]
    assert found[0] == store.devices.list_devices(DeviceQuery(limit=2), T0 + 1)[1]
    assert store.devices.devices_by_id([], T0) == []
