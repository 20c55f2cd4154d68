"""Uplink checks in the store, on SQLite and PostgreSQL alike: one running per school,
ending once, the latest of each school, sweeps."""

from __future__ import annotations

import pytest

from controller.stores import Stores
from inventory.uplink import UplinkCheck, UplinkState

T0 = 1_800_000_000.0


@pytest.fixture
def store(both_stores: Stores) -> Stores:
    return both_stores


def test_a_school_has_at_most_one_check_running(store: Stores) -> None:
    assert store.uplink.start_uplink_check(UplinkCheck("s1", T0, "d1", 100), T0 - 75)
    # Another device, a moment later: refused while the first runs.
    assert not store.uplink.start_uplink_check(UplinkCheck("s1", T0 + 1, "d2", 100), T0 - 74)
    # Another school is independent.
    assert store.uplink.start_uplink_check(UplinkCheck("s2", T0 + 1, "d3", 100), T0 - 74)
    ended = store.uplink.finish_uplink_check("s1", T0, 80, 0.5, 1.28e-3, "")
    assert ended == UplinkCheck("s1", T0, "d1", 80, 0.5, 1.28e-3)
    assert store.uplink.start_uplink_check(UplinkCheck("s1", T0 + 2, "d2", 100), T0 - 73)


def test_a_slot_claimed_by_one_check_is_refused_to_another_but_not_to_a_hand_check(
    store: Stores,
) -> None:
    slot = T0 - 10
    assert store.uplink.start_uplink_check(UplinkCheck("s1", T0, "d1", 100), T0 - 75, slot)
    assert store.uplink.finish_uplink_check("s1", T0, 100, 1.0, 8e-4, "")
    # Another controller coming to the same slot after the check ended: refused.
    assert not store.uplink.start_uplink_check(UplinkCheck("s1", T0 + 2, "d2", 100), T0, slot)
    # The same slot's claim by a check started exactly at it counts too.
    assert store.uplink.start_uplink_check(UplinkCheck("s2", slot, "d3", 100), slot - 75, slot)
    assert store.uplink.finish_uplink_check("s2", slot, 100, 1.0, 8e-4, "")
    assert not store.uplink.start_uplink_check(UplinkCheck("s2", T0, "d3", 100), T0 - 75, slot)
    # The next slot, and a check by hand (no slot), may start.
    assert store.uplink.start_uplink_check(UplinkCheck("s1", T0 + 3, "d2", 100), T0, None)
    assert store.uplink.finish_uplink_check("s1", T0 + 3, 100, 1.0, 8e-4, "")
    assert store.uplink.start_uplink_check(UplinkCheck("s1", T0 + 4, "d2", 100), T0, T0 + 3.5)
    assert [c.device_id for c in store.uplink.latest_uplink_checks("s1")] == ["d2"]
    assert store.uplink.uplink_last_started() == {"s1": T0 + 4, "s2": slot}


def test_a_check_left_running_past_its_deadline_does_not_block_the_school(
    store: Stores,
) -> None:
    assert store.uplink.start_uplink_check(UplinkCheck("s1", T0, "d1", 100), T0 - 75)
    # Its controller died: 100 s later a check whose cutoff is past it may start.
    assert store.uplink.start_uplink_check(UplinkCheck("s1", T0 + 100, "d1", 100), T0 + 25)


def test_a_check_ends_once(store: Stores) -> None:
    store.uplink.start_uplink_check(UplinkCheck("s1", T0, "d1", 100), 0)
    failed = store.uplink.finish_uplink_check("s1", T0, 100, None, None, "no answer")
    assert failed is not None and failed.state is UplinkState.FAILED
    assert store.uplink.finish_uplink_check("s1", T0, 100, 1.0, 8e-4, "") is None
    assert store.uplink.finish_uplink_check("s9", T0, 100, 1.0, 8e-4, "") is None


def test_the_latest_check_and_the_latest_measurement_of_each_school(store: Stores) -> None:
    for n, (school, mbps) in enumerate(
        [("s1", 50.0), ("s1", 70.0), ("s2", 900.0), ("s1", None), ("s3", None)]
    ):
        at = T0 + n
        store.uplink.start_uplink_check(UplinkCheck(school, at, "d", 100), 0)
        if mbps is not None:
            store.uplink.finish_uplink_check(school, at, 100, 1.0, mbps, "")
        elif school == "s1":
            store.uplink.finish_uplink_check(school, at, 100, None, None, "refused")
    latest = {c.school_id: c for c in store.uplink.latest_uplink_checks()}
    assert set(latest) == {"s1", "s2", "s3"}
    assert latest["s1"].state is UplinkState.FAILED and latest["s1"].started_at == T0 + 3
    assert latest["s3"].state is UplinkState.RUNNING
    measured = store.uplink.latest_uplink_checks(measured=True)
    assert [(c.school_id, c.mbps) for c in measured] == [("s1", 70.0), ("s2", 900.0)]
    assert [c.school_id for c in store.uplink.latest_uplink_checks("s2")] == ["s2"]
    scoped = store.uplink.latest_uplink_checks(schools=frozenset({"s2", "s3", "s9"}))
    assert [c.school_id for c in scoped] == ["s2", "s3"]
    assert store.uplink.latest_uplink_checks("nowhere") == []
    assert store.uplink.uplink_last_started() == {"s1": T0 + 3, "s2": T0 + 2, "s3": T0 + 4}


def test_sweeps_fail_checks_left_running_and_prune_old_ones(store: Stores) -> None:
    store.uplink.start_uplink_check(UplinkCheck("s1", T0, "d1", 100), 0)
    store.uplink.start_uplink_check(UplinkCheck("s2", T0 + 500, "d2", 100), 0)
    assert store.uplink.expire_uplink_checks(T0 + 100, "no answer") == 1
    s1, s2 = store.uplink.latest_uplink_checks()
    assert s1.error == "no answer" and s2.state is UplinkState.RUNNING
    assert store.uplink.prune_uplink_checks(T0 + 100) == 1
    assert [c.school_id for c in store.uplink.latest_uplink_checks()] == ["s2"]


def test_failed_checks_since_the_latest_measurement(store: Stores) -> None:
    # s1: measured, then two failures; s2: failed, then measured; s3: never measured.
    for n, (school, mbps) in enumerate(
        [("s1", 50.0), ("s1", None), ("s1", None), ("s2", None), ("s2", 300.0), ("s3", None)]
    ):
        at = T0 + n
        store.uplink.start_uplink_check(UplinkCheck(school, at, "d", 100), 0)
        if mbps is None:
            store.uplink.finish_uplink_check(school, at, 100, None, None, "no answer")
        else:
            store.uplink.finish_uplink_check(school, at, 100, 1.0, mbps, "")
    # One still running counts for nothing yet.
    store.uplink.start_uplink_check(UplinkCheck("s4", T0 + 9, "d", 100), 0)
    assert store.uplink.uplink_failures() == {"s1": 2, "s2": 0, "s3": 1, "s4": 0}
