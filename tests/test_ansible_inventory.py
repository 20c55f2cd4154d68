"""The registry as an Ansible inventory: hosts, variables, groups and their names."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from inventory.ansible_inventory import build_inventory, plan_inventory, runner_inventory
from inventory.model import (
    Condition,
    DeviceIdentity,
    DeviceKind,
    DeviceRecord,
    DeviceReport,
    DeviceStatus,
    OsInfo,
)

ANSIBLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STATE_GROUPS = ("status_", "condition_")


def device(
    device_id: str,
    *,
    school: str = "1234",
    room: str = "101",
    kind: DeviceKind = DeviceKind.PANEL,
    address: str = "198.18.0.5",
    os_version: str | None = "22.04",
    labels: dict[str, str] | None = None,
    status: DeviceStatus = DeviceStatus.ONLINE,
    condition: Condition | None = None,
) -> DeviceRecord:
    return DeviceRecord(
        identity=DeviceIdentity(
            device_id=device_id,
            kind=kind,
            school_id=school,
            room_id=room,
            os=OsInfo("Ubuntu", os_version, "6.8.0", 0.0) if os_version is not None else None,
            address=address,
            labels=tuple(sorted((labels or {}).items())),
        ),
        status=status,
        stream_up=True,
        first_seen=0.0,
        last_heartbeat=None,
        offline_after=90.0,
        last_seq=0,
        health=None,
        report=DeviceReport(condition, ()) if condition is not None else None,
    )


def unsafe(text: str) -> dict[str, str]:
    return {"__ansible_unsafe": text}


def test_hosts_carry_their_address_and_facts_as_hostvars() -> None:
    inv = build_inventory([device("panel-1", labels={"grade": "5"})])
    assert inv["_meta"]["hostvars"] == {
        "panel-1": {
            "ansible_host": "198.18.0.5",
            "sf_device_id": "panel-1",
            "sf_kind": "panel",
            "sf_school": "1234",
            "sf_room": "101",
            # Text the device sent is never templated by Ansible.
            "sf_os_version": unsafe("22.04"),
            "sf_labels": {"grade": unsafe("5")},
            "sf_status": "online",
            "sf_condition": "unknown",
        }
    }


def test_groups_by_school_room_kind_os_and_label() -> None:
    inv = build_inventory(
        [
            device("panel-1", labels={"grade": "5"}),
            device("laptop-1", kind=DeviceKind.LAPTOP, room="", os_version=None),
            device("panel-2", school="77", room="1", labels={"grade": "5", "wing": "north"}),
        ]
    )
    groups = {
        name: body["hosts"]
        for name, body in inv.items()
        if name not in ("_meta", "all", "schoolfleet") and not name.startswith(_STATE_GROUPS)
    }
    assert groups == {
        "school_1234": ["laptop-1", "panel-1"],
        "school_77": ["panel-2"],
        "room_1234_101": ["panel-1"],
        "room_77_1": ["panel-2"],
        "kind_panel": ["panel-1", "panel-2"],
        "kind_laptop": ["laptop-1"],
        "os_22_04": ["panel-1", "panel-2"],
        "label_grade_5": ["panel-1", "panel-2"],
        "label_wing_north": ["panel-2"],
    }
    assert set(inv["all"]["children"]) == {
        *groups,
        "schoolfleet",
        "status_online",
        "condition_unknown",
    }
    assert inv["schoolfleet"] == {"hosts": ["laptop-1", "panel-1", "panel-2"], "vars": {}}
    assert all(ANSIBLE_NAME.fullmatch(name) for name in inv["all"]["children"])


def test_groups_by_whether_online_and_the_devices_verdict() -> None:
    plan = plan_inventory(
        [
            device("a", condition=Condition.OK),
            device("b", condition=Condition.DEGRADED, status=DeviceStatus.OFFLINE),
            device("c", condition=Condition.CRITICAL),
            device("d", status=DeviceStatus.OFFLINE),
        ]
    )
    state_groups = {g: h for g, h in plan.groups.items() if g.startswith(_STATE_GROUPS)}
    assert state_groups == {
        "condition_critical": ("c",),
        "condition_degraded": ("b",),
        "condition_ok": ("a",),
        "condition_unknown": ("d",),
        "status_offline": ("b", "d"),
        "status_online": ("a", "c"),
    }
    assert plan.hostvars["b"]["sf_status"] == "offline"
    assert plan.hostvars["b"]["sf_condition"] == "degraded"


def test_the_fleet_group_carries_the_variables_given_and_warnings_are_lines() -> None:
    plan = plan_inventory([device("a"), *(device(f"n{i}", address="") for i in range(12))])
    inv = plan.script_inventory({"ansible_user": "root"})
    assert inv["schoolfleet"] == {"hosts": ["a"], "vars": {"ansible_user": "root"}}
    assert plan.warnings() == [
        "12 device(s) left out, no address known: "
        "n0, n1, n10, n11, n2, n3, n4, n5, n6, n7 and 2 more"
    ]


def test_a_device_without_an_address_is_left_out_and_said_to_be() -> None:
    plan = plan_inventory([device("panel-1"), device("panel-2", address="")])
    assert list(plan.hostvars) == ["panel-1"]
    assert all("panel-2" not in hosts for hosts in plan.groups.values())
    assert [(s.device_id, s.reason) for s in plan.skipped] == [
        ("panel-2", "unreachable: no address")
    ]
    assert plan.collisions == ()


def test_values_that_sanitize_alike_never_share_a_group() -> None:
    plan = plan_inventory(
        [
            device("a", os_version="22.04"),
            device("b", os_version="22-04"),
            device("c", os_version="24.04"),
            # label a_b=c and a=b_c would both be label_a_b_c
            device("d", os_version=None, labels={"a_b": "c"}),
            device("e", os_version=None, labels={"a": "b_c"}),
        ]
    )
    assert "os_22_04" not in plan.groups
    assert "label_a_b_c" not in plan.groups
    assert plan.groups["os_24_04"] == ("c",)
    os_groups = [name for name in plan.groups if name.startswith("os_22_04_")]
    assert sorted(plan.groups[name] for name in os_groups) == [("a",), ("b",)]
    assert [(c.name, c.values) for c in plan.collisions] == [
        ("label_a_b_c", ("label.a=b_c", "label.a_b=c")),
        ("os_22_04", ("os=22-04", "os=22.04")),
    ]
    assert set(plan.collisions[1].groups) == set(os_groups)
    # The names depend on the values alone, not on which other devices there are.
    again = plan_inventory([device("b", os_version="22-04"), device("x", os_version="22.04")])
    assert again.collisions[0].groups == plan.collisions[1].groups


def test_characters_ansible_refuses_become_underscores() -> None:
    plan = plan_inventory(
        [device("p", school="s.1:x", room="r-2", labels={"b.c": "Klasse 5ä/{{x}}"})]
    )
    assert set(plan.groups) == {
        "school_s_1_x",
        "room_s_1_x_r_2",
        "kind_panel",
        "os_22_04",
        "label_b_c_Klasse_5____x__",
        "status_online",
        "condition_unknown",
    }


def test_runner_form_has_the_same_hosts_and_groups() -> None:
    devices = [device("panel-1", labels={"grade": "5"}), device("panel-2", address="")]
    script = build_inventory(devices)
    runner = runner_inventory(devices)
    assert runner["all"]["hosts"] == script["_meta"]["hostvars"]
    children = runner["all"]["children"]
    assert set(children) == set(script["all"]["children"]) - {"schoolfleet"}
    for name, body in children.items():
        assert body == {"hosts": {host: {} for host in script[name]["hosts"]}}


def test_an_empty_registry_is_an_empty_inventory() -> None:
    assert build_inventory([]) == {
        "_meta": {"hostvars": {}},
        "all": {"children": ["schoolfleet"]},
        "schoolfleet": {"hosts": [], "vars": {}},
    }


_VALUE = st.text(alphabet="ab_.-1", min_size=1, max_size=4)


# No deadline: the suite runs beside real processes, and this is about names, not speed.
@settings(deadline=None)
@given(st.lists(st.tuples(_VALUE, _VALUE), min_size=1, max_size=12, unique=True))
def test_group_names_are_valid_and_one_per_set_of_values(pairs: list[tuple[str, str]]) -> None:
    names = [f"a{n}" for n in range(len(pairs))]
    plan = plan_inventory(
        device(name, school="s", os_version=None, room="", labels={"x" + k: v})
        for name, (k, v) in zip(names, pairs, strict=True)
    )
    label_groups = {g: hosts for g, hosts in plan.groups.items() if g.startswith("label_")}
    assert all(ANSIBLE_NAME.fullmatch(g) for g in plan.groups)
    # Each device has its own label value, so its own group: never merged, never lost.
    assert sorted(label_groups.values()) == sorted((name,) for name in names)


def test_a_value_made_to_look_like_a_renamed_group_does_not_join_it() -> None:
    first = plan_inventory([device("a", os_version="22.04"), device("b", os_version="22-04")])
    renamed = first.collisions[0].groups[0]
    lookalike = renamed.removeprefix("os_")
    plan = plan_inventory(
        [
            device("a", os_version="22.04"),
            device("b", os_version="22-04"),
            device("c", os_version=lookalike),
        ]
    )
    assert plan.groups[renamed] == ("c",)
    assert plan.groups[f"{renamed}_2"] == ("a",) or plan.groups[f"{renamed}_2"] == ("b",)
    assert sorted(plan.groups[g] for g in plan.groups if g.startswith("os_")) == [
        ("a",),
        ("b",),
        ("c",),
    ]
