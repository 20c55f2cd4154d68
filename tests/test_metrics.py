"""/metrics series read from the store at scrape: per school (never per device), every
known school with every series, at 0 where nothing is counted."""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

from prometheus_client import CollectorRegistry, generate_latest

from controller.fleet.metrics import ControllerMetrics, FleetCollector
from controller.infra.metrics import InfraCollector
from controller.lessons.metrics import LessonCollector
from controller.rollouts.metrics import PER_ROLLOUT_MAX, RolloutCollector, waiting_hosts
from controller.rollouts.store import NewHost
from controller.store.rows import HeartbeatRow
from controller.stores import Stores, sqlite_stores
from controller.uplink.metrics import UplinkCollector
from inventory.infra import School
from inventory.lessons import LessonState
from inventory.model import Condition, DeviceReport
from inventory.rollouts import LessonRates, RolloutSpec, RolloutState
from inventory.school_day import Candidate, Window, pick_wave
from inventory.uplink import UplinkCheck
from tests.test_lessons_store import lesson
from tests.test_store_sqlite import T0, beat, ident


def _series(registry: CollectorRegistry, prefix: str) -> dict[str, float]:
    lines = generate_latest(registry).decode().splitlines()
    out = {}
    for line in lines:
        if line.startswith(prefix):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_series_grow_with_schools_not_devices(tmp_path: Path) -> None:
    store = sqlite_stores(tmp_path / "c.db")
    registry = CollectorRegistry()
    ControllerMetrics(registry).connected_streams.set_function(lambda: 4)
    registry.register(FleetCollector(store.devices, store.infra.school_ids, now=lambda: T0))
    for n in (10, 500):
        for i in range(n):
            store.devices.device_connected(ident(f"d{i:04}", f"s{i % 2}"), i + 1, 90, T0)
        store.devices.record_messages([beat(f"d{i:04}", 1, T0) for i in range(0, n, 2)])
        series = _series(registry, "schoolfleet_devices{")
        assert len(series) == 16  # 2 schools x 4 kinds x 2 statuses, whatever n is
        assert series['schoolfleet_devices{kind="panel",school="s0",status="online"}'] == n // 2
        per_school = _series(registry, "schoolfleet_device_")
        assert len(per_school) == 2 * (3 + 1 + 1)  # conditions, missing, dropped per school
    assert _series(registry, "schoolfleet_connected_streams") == {
        "schoolfleet_connected_streams": 4
    }
    store.close()


def test_verdicts_and_losses_are_summed_per_school(tmp_path: Path) -> None:
    store = sqlite_stores(tmp_path / "c.db")
    registry = CollectorRegistry()
    registry.register(FleetCollector(store.devices, store.infra.school_ids, now=lambda: T0))
    for i, condition in enumerate([Condition.OK, Condition.CRITICAL, Condition.CRITICAL]):
        store.devices.device_connected(ident(f"d{i}"), i + 1, 90, T0)
        report = DeviceReport(condition, (), spool_dropped=i)
        store.devices.record_messages(
            [HeartbeatRow(f"d{i}", 1, T0, beat(f"d{i}", 1, T0).health, report)]
        )
    store.devices.record_messages([beat("d0", 4, T0)])  # seqs 2 and 3 never arrived
    series = _series(registry, "schoolfleet_device_")
    assert series == {
        'schoolfleet_device_conditions{condition="ok",school="s1"}': 1,
        'schoolfleet_device_conditions{condition="degraded",school="s1"}': 0,
        'schoolfleet_device_conditions{condition="critical",school="s1"}': 2,
        'schoolfleet_device_messages_missing{school="s1"}': 2,
        'schoolfleet_device_spool_dropped{school="s1"}': 0 + 1 + 2,
    }
    store.close()


def _registry(store: Stores) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(FleetCollector(store.devices, store.infra.school_ids, now=lambda: T0))
    registry.register(InfraCollector(store.infra, store.infra.school_ids, now=lambda: T0))
    registry.register(UplinkCollector(store.uplink, store.infra.school_ids))
    registry.register(
        LessonCollector(
            store.lesson_counts, store.infra.school_ids, ZoneInfo("UTC"), 60.0, now=lambda: T0
        )
    )
    return registry


def test_a_school_known_only_from_the_inventory_has_every_series_at_zero(
    tmp_path: Path,
) -> None:
    store = sqlite_stores(tmp_path / "c.db")
    store.infra.save_inventory([School("s9")], [], [], [], T0)
    series = _series(_registry(store), "schoolfleet_")
    of_s9 = {k: v for k, v in series.items() if 'school="s9"' in k}
    assert set(of_s9.values()) == {0}
    families = {k.split("{")[0] for k in of_s9}
    assert families == {
        "schoolfleet_devices",
        "schoolfleet_device_conditions",
        "schoolfleet_device_messages_missing",
        "schoolfleet_device_spool_dropped",
        "schoolfleet_access_points",
        "schoolfleet_servers",
        "schoolfleet_access_points_unseen",
        "schoolfleet_devices_on_unknown_bssids",
        "schoolfleet_school_uplink_measured",
        "schoolfleet_school_uplink_failures",
        "schoolfleet_lessons_today",
        "schoolfleet_lessons_under_way",
        "schoolfleet_lesson_panels_today",
        "schoolfleet_school_in_session",
    }
    # Per school: 8 + 3 + 1 + 1 + 3 + 3 + 1 + 1 + 1 + 1 + 6 + 3 + 7 + 1.
    assert len(of_s9) == 40
    store.close()


def test_todays_lessons_are_exact_from_the_first_scrape(tmp_path: Path) -> None:
    store = sqlite_stores(tmp_path / "c.db")
    store.infra.save_inventory([School("s1"), School("s2")], [], [], [], T0 - 7200)
    store.lessons.add_room("s1", "r1")
    a, b = lesson(start=T0 - 3000, minutes=45), lesson(start=T0 + 600)
    store.lessons.save_lessons([a, b], T0 - 7200)
    store.lessons.dispatch([(a.lesson_id, [])], T0 - 3000)  # no panel in the room
    series = _series(_registry(store), "schoolfleet_lessons_today")
    assert series['schoolfleet_lessons_today{school="s1",state="no-device"}'] == 1
    assert series['schoolfleet_lessons_today{school="s1",state="scheduled"}'] == 1
    assert series['schoolfleet_lessons_today{school="s2",state="failed"}'] == 0
    assert sum(series.values()) == 2 and len(series) == 2 * len(LessonState)
    session = _series(_registry(store), "schoolfleet_school_in_session")
    assert session == {
        'schoolfleet_school_in_session{school="s1"}': 1,
        'schoolfleet_school_in_session{school="s2"}': 0,
    }
    store.close()


def test_a_school_whose_uplink_checks_fail_is_counted(tmp_path: Path) -> None:
    store = sqlite_stores(tmp_path / "c.db")
    store.infra.save_inventory([School("s1"), School("s2"), School("s3")], [], [], [], T0)
    store.uplink.start_uplink_check(UplinkCheck("s1", T0, "d", 100), 0)
    store.uplink.finish_uplink_check("s1", T0, 100, 1.0, 80.0, "")
    for n in range(3):
        store.uplink.start_uplink_check(UplinkCheck("s2", T0 + n, "d", 100), 0)
        store.uplink.finish_uplink_check("s2", T0 + n, 100, None, None, "no answer")
    series = _series(_registry(store), "schoolfleet_school_uplink_")
    assert series == {
        'schoolfleet_school_uplink_mbps{school="s1"}': 80.0,
        'schoolfleet_school_uplink_measured{school="s1"}': 1,
        'schoolfleet_school_uplink_measured{school="s2"}': 0,
        'schoolfleet_school_uplink_measured{school="s3"}': 0,
        'schoolfleet_school_uplink_failures{school="s1"}': 0,
        'schoolfleet_school_uplink_failures{school="s2"}': 3,
        'schoolfleet_school_uplink_failures{school="s3"}': 0,
    }
    store.close()


def test_waiting_hosts_read_what_the_wave_picker_writes() -> None:
    zone = ZoneInfo("UTC")
    candidates = [Candidate(f"d{i}", "s1", f"r{i}") for i in range(5)]
    busy = {("s1", "r0"): T0 + 60, ("s1", "r1"): T0 + 60}
    windows: dict[str, list[Window]] = {"s1": []}
    pick = pick_wave(candidates, 5, busy, windows, T0, 600, zone)
    assert waiting_hosts(pick.waiting) == {"lessons": 2, "maintenance-window": 0}
    assert waiting_hosts("") == {"lessons": 0, "maintenance-window": 0}
    text = "hosts wait: 3 in rooms with lessons (first free Mon 10:00), 7 outside their "
    text += "school's maintenance window (next opens Mon 18:00)"
    assert waiting_hosts(text) == {"lessons": 3, "maintenance-window": 7}


def test_per_rollout_progress_for_the_newest_unfinished_rollouts(tmp_path: Path) -> None:
    store = sqlite_stores(tmp_path / "c.db")
    spec = RolloutSpec("update.yml", "school=s1")
    for n in range(PER_ROLLOUT_MAX + 2):
        hosts = [NewHost(f"d{n}-{i}", "s1") for i in range(3)]
        store.rollouts.create_rollout(spec, hosts, "ops", T0 + n, LessonRates(0, 0))
    store.rollouts.set_rollout_state(1, RolloutState.DONE, "", T0 + 100)
    store.rollouts.set_waiting(PER_ROLLOUT_MAX + 2, "hosts wait: 2 in rooms with lessons (x)", T0)
    registry = CollectorRegistry()
    registry.register(RolloutCollector(store.rollouts))
    info = _series(registry, "schoolfleet_rollout_info")
    assert len(info) == PER_ROLLOUT_MAX
    assert 'schoolfleet_rollout_info{playbook="update.yml",rollout="2",state="running"}' not in info
    newest = str(PER_ROLLOUT_MAX + 2)
    progress = _series(registry, "schoolfleet_rollout_progress")
    assert progress[f'schoolfleet_rollout_progress{{outcome="pending",rollout="{newest}"}}'] == 3
    waiting = _series(registry, "schoolfleet_rollout_waiting_hosts")
    assert waiting[f'schoolfleet_rollout_waiting_hosts{{reason="lessons",rollout="{newest}"}}'] == 2
    store.close()
