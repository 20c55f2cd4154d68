"""A rollout's start decided in-process, before anything is stored or run: the checks
in their order (the cheap ones first, the syntax check's process last), the hosts a
selector takes within the caller's schools, offline devices left out unless asked for,
and what a dry run shows. Real SQLite, the project's own playbooks, real
ansible-playbook for the syntax check."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from controller.errors import RolloutConflict, RolloutRefused
from controller.rollouts.runner import RunnerSettings
from controller.rollouts.starting import RolloutStarts, StartAsked, preview
from controller.store.rows import HeartbeatRow
from controller.stores import Stores, sqlite_stores
from inventory.model import DeviceIdentity, DeviceKind, Health
from inventory.rollouts import HostOutcome, RolloutSpec, RolloutState

PLAYBOOKS = Path(__file__).resolve().parent.parent / "playbooks"
T0 = 1_800_000_000.0
# Panels p0..p5 in s1 (p0, p2, p4 online: a heartbeat just now; the others never sent
# one) and p6..p9 in s2 (online).
ONLINE = {"p0", "p2", "p4", "p6", "p7", "p8", "p9"}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Stores]:
    s = sqlite_stores(tmp_path / "c.db")
    for n in range(10):
        identity = DeviceIdentity(
            f"p{n}", DeviceKind.PANEL, "s1" if n < 6 else "s2", "r1", "host", "0.1"
        )
        s.devices.device_connected(identity, n + 1, 90, T0)
        if identity.device_id in ONLINE:
            beat = HeartbeatRow(identity.device_id, 1, T0, Health(T0, 1, 1, 1, 1, 0, 0, 0))
            s.devices.record_messages([beat])
    yield s
    s.close()


def _runner(tmp_path: Path, **changes: object) -> RunnerSettings:
    settings = RunnerSettings(
        remote_user="schoolfleet",
        known_hosts=tmp_path / "known_hosts",
        control_path_dir=tmp_path,
        strategy="linear",
    )
    return replace(settings, **changes)  # type: ignore[arg-type]


def _asked(selector: str, **changes: object) -> StartAsked:
    asked = StartAsked(
        spec=RolloutSpec(playbook="timesync.yml", selector=selector),
        strategy="linear",
        extra_vars_json="",
        central=True,
        scope=None,
    )
    return replace(asked, **changes)  # type: ignore[arg-type]


def _starts(store: Stores, runner: RunnerSettings | None) -> RolloutStarts:
    return RolloutStarts(store.devices.select_devices, PLAYBOOKS, runner)


def test_a_start_takes_the_online_devices_the_selector_matches(
    store: Stores, tmp_path: Path
) -> None:
    plan = _starts(store, _runner(tmp_path)).plan(_asked("school=s1"), T0 + 1)
    assert [h.device_id for h in plan.hosts] == ["p0", "p2", "p4"]
    assert plan.spec.offline_skipped == ("p1", "p3", "p5")
    assert plan.spec.strategy == "linear"
    everyone = _starts(store, _runner(tmp_path)).plan(
        _asked("school=s1", spec=RolloutSpec("timesync.yml", "school=s1", include_offline=True)),
        T0 + 1,
    )
    assert [h.device_id for h in everyone.hosts] == ["p0", "p1", "p2", "p3", "p4", "p5"]
    assert everyone.spec.offline_skipped == ()


def test_a_school_it_caller_takes_only_devices_of_their_schools(
    store: Stores, tmp_path: Path
) -> None:
    starts = _starts(store, _runner(tmp_path))
    plan = starts.plan(_asked("kind=panel", scope=frozenset({"s2"})), T0 + 1)
    assert [(h.device_id, h.school_id) for h in plan.hosts] == [
        ("p6", "s2"),
        ("p7", "s2"),
        ("p8", "s2"),
        ("p9", "s2"),
    ]
    with pytest.raises(RolloutRefused, match=r"^selector 'device=p0' matches no devices$"):
        starts.plan(_asked("device=p0", scope=frozenset({"s2"})), T0 + 1)


def test_only_offline_devices_are_refused_with_the_way_to_take_them(
    store: Stores, tmp_path: Path
) -> None:
    with pytest.raises(RolloutRefused) as caught:
        _starts(store, _runner(tmp_path)).plan(_asked("device=p1|p3"), T0 + 1)
    assert str(caught.value) == (
        "selector 'device=p1|p3' matches 2 device(s), all offline: "
        "add --include-offline to try them at their last address"
    )


def test_extra_vars_are_checked_against_the_playbook_and_the_caller(
    store: Stores, tmp_path: Path
) -> None:
    starts = _starts(store, _runner(tmp_path))
    servers = json.dumps({"sf_ntp_servers": ["ntp.school.example"]})
    plan = starts.plan(_asked("school=s2", extra_vars_json=servers, central=False), T0 + 1)
    assert plan.spec.extra_vars == {"sf_ntp_servers": ["ntp.school.example"]}
    central_only = json.dumps({"sf_manage_packages": False})
    with pytest.raises(RolloutRefused, match="sf_manage_packages"):
        starts.plan(_asked("school=s2", extra_vars_json=central_only, central=False), T0 + 1)
    connection = json.dumps({"ansible_host": "198.18.0.1"})
    with pytest.raises(RolloutRefused, match="ansible_host"):
        starts.plan(_asked("school=s2", extra_vars_json=connection), T0 + 1)


def test_what_the_controller_lacks_is_a_conflict_not_the_request(
    store: Stores, tmp_path: Path
) -> None:
    with pytest.raises(RolloutRefused, match=r"^rollouts are not set up on this controller$"):
        _starts(store, None).plan(_asked("school=s1"), T0 + 1)
    missing_user = _starts(store, _runner(tmp_path, os_user="sf-no-such-user"))
    with pytest.raises(RolloutConflict, match="OS user 'sf-no-such-user', which does not exist"):
        missing_user.plan(_asked("school=s1"), T0 + 1)
    with pytest.raises(RolloutRefused, match="strategy 'free' is not one of") as caught:
        _starts(store, _runner(tmp_path)).plan(_asked("school=s1", strategy="free"), T0 + 1)
    assert not isinstance(caught.value, RolloutConflict)


def test_an_unknown_playbook_is_refused_before_the_store_is_read(
    store: Stores, tmp_path: Path
) -> None:
    asked = _asked("school=s1", spec=RolloutSpec("../../etc/passwd", "school=s1"))
    store.close()  # a read now would fail: the refusal must come first
    with pytest.raises(RolloutRefused, match="etc/passwd"):
        _starts(store, _runner(tmp_path)).plan(asked, T0 + 1)


def test_a_dry_run_shows_the_first_wave_and_stores_nothing(store: Stores, tmp_path: Path) -> None:
    spec = RolloutSpec("timesync.yml", "kind=panel", include_offline=True)
    plan = _starts(store, _runner(tmp_path)).plan(_asked("kind=panel", spec=spec), T0 + 1)
    shown = preview(plan, T0 + 2)
    assert shown.state is RolloutState.RUNNING
    assert shown.counts[HostOutcome.PENDING] == 10
    assert shown.reason == "dry run: the first wave would take 1 host(s)"
    assert store.rollouts.get_rollout(1) is None
