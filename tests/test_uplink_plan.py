"""The uplink checks' decisions: slots spread over the interval, which school is due,
which device measures, what an answer is worth."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from controller.uplink.plan import (
    claim_delay,
    due_schools,
    judge,
    last_slot,
    next_due,
    pick_device,
    slot_offset,
)
from inventory.model import DeviceKind
from inventory.uplink import UplinkCheck, UplinkState, mbps

H6 = 6 * 3600.0
T0 = 1_800_000_000.0
ids = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=64)


@given(ids, st.floats(1.0, 1e6), st.floats(0, 4e9))
def test_the_last_slot_is_at_or_before_now_and_within_one_interval(
    school: str, interval: float, now: float
) -> None:
    slot = last_slot(school, interval, now)
    assert now - interval < slot <= now + 1e-6
    assert 0 <= slot_offset(school, interval) < interval


def test_slots_of_many_schools_spread_over_the_interval() -> None:
    offsets = sorted(slot_offset(f"school-{n}", H6) for n in range(4000))
    # Every tenth of the interval holds roughly a tenth of the schools.
    per_tenth = [sum(1 for o in offsets if k * H6 / 10 <= o < (k + 1) * H6 / 10) for k in range(10)]
    assert all(300 < n < 500 for n in per_tenth), per_tenth


def test_a_school_is_due_once_per_interval_at_its_slot() -> None:
    school = "s1"
    slot = last_slot(school, H6, T0)
    # Checked at its slot: not due again until the next one.
    assert due_schools([school], {school: slot}, T0 - H6, slot + H6 - 1, H6) == []
    assert due_schools([school], {school: slot}, T0 - H6, slot + H6, H6) == [school]


def test_a_new_controller_waits_for_each_schools_slot_rather_than_checking_all_at_once() -> None:
    schools = [f"s{n}" for n in range(100)]
    since = T0
    # At the start nothing is due; after a tenth of the interval about a tenth is.
    assert due_schools(schools, {}, since, since, H6) == []
    due = due_schools(schools, {}, since, since + H6 / 10, H6)
    assert 2 <= len(due) <= 25
    assert len(due_schools(schools, {}, since, since + H6, H6)) == 100


def test_due_schools_come_longest_waiting_first() -> None:
    schools = [f"s{n}" for n in range(50)]
    now = T0 + H6
    due = due_schools(schools, {}, T0, now, H6)
    slots = [last_slot(s, H6, now) for s in due]
    assert slots == sorted(slots)


def test_next_due_is_the_nearest_coming_slot() -> None:
    schools = ["a", "b", "c"]
    nxt = next_due(schools, H6, T0)
    assert nxt is not None and T0 < nxt <= T0 + H6
    assert nxt == min(last_slot(s, H6, T0) + H6 for s in schools)
    assert next_due([], H6, T0) is None


def test_the_server_measures_first_then_wired_machines_then_wifi_laptops() -> None:
    assert pick_device([]) is None
    laptop, panel, mono, server = (
        ("l1", DeviceKind.LAPTOP),
        ("p1", DeviceKind.PANEL),
        ("m1", DeviceKind.MONOBLOCK),
        ("srv", DeviceKind.SERVER),
    )
    assert pick_device([laptop, panel, mono, server]) == "srv"
    assert pick_device([laptop, panel, mono]) == "m1"
    assert pick_device([laptop, panel]) == "p1"
    assert pick_device([laptop, ("a0", DeviceKind.LAPTOP)]) == "a0"


def test_a_controller_waits_a_step_per_better_kind_another_controller_holds() -> None:
    server, monoblock, panel, laptop = (
        DeviceKind.SERVER,
        DeviceKind.MONOBLOCK,
        DeviceKind.PANEL,
        DeviceKind.LAPTOP,
    )
    # The school server's controller claims at the slot, whatever the others hold.
    assert claim_delay(server, [server, monoblock, laptop], 2.0) == 0.0
    # A panel's waits for the server's and a monoblock's, once per kind however many.
    assert claim_delay(panel, [monoblock, server, monoblock, panel, laptop], 2.0) == 4.0
    assert claim_delay(laptop, [panel], 2.0) == 2.0
    # Alone with its school, or with only worse devices elsewhere: no wait.
    assert claim_delay(laptop, [], 2.0) == 0.0
    assert claim_delay(monoblock, [panel, laptop, monoblock], 2.0) == 0.0


def test_an_answer_is_a_measurement_only_if_its_figures_can_be() -> None:
    good = judge(25_000_000, True, "", 25_000_000, 2.0)
    assert good.mbps == 100.0 and good.error == "" and good.received == 25_000_000
    cut = judge(25_000_000, True, "stopped at the timeout", 5_000_000, 60.0)
    assert cut.mbps is not None and math.isclose(cut.mbps, 0.6667, rel_tol=1e-3)
    assert judge(100, False, "connection refused", 0, 0).error == "connection refused"
    assert judge(100, False, "", 0, 0).error
    for received, seconds in ((0, 1.0), (101, 1.0), (50, 0.0), (50, math.nan), (50, -1.0)):
        bad = judge(100, True, "", received, seconds)
        assert bad.mbps is None and bad.error, (received, seconds)


def test_a_checks_state_follows_from_what_it_holds() -> None:
    running = UplinkCheck("s1", T0, "d1", 100)
    assert running.state is UplinkState.RUNNING
    assert UplinkCheck("s1", T0, "d1", 100, 1.0, mbps(100, 1.0)).state is UplinkState.OK
    assert UplinkCheck("s1", T0, "d1", 100, error="timeout").state is UplinkState.FAILED
    assert mbps(12_500_000, 1.0) == 100.0
