"""The schools' infrastructure end to end: an inventory file through schoolctl to a real
controller, listed back, counted on /metrics, and a server's host key trusted."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from controller.stores import sqlite_stores
from inventory.infra import HostKey, ProbeResult, TargetKind
from protos.schoolfleet.v1 import fleet_pb2
from tests import raw_stream as wire
from tests.procs import Controller, schoolctl, wait_until

pytestmark = pytest.mark.e2e

HEADER = "type,id,school,room,name,location,model,mac,bssids,address,ssh_user,ssh_port\n"
DISTRICT = HEADER + (
    "school,s1,,,School 1,,,,,,,\n"
    "school,s2,,,School 2,,,,,,,\n"
    "room,r101,s1,,,,,,,,,\n"
    "ap,ap-1,s1,r101,,2nd floor,U6,AA-BB-CC-00-00-01,aa:bb:cc:00:01:01;aa:bb:cc:00:01:02,"
    "198.18.1.11,,\n"
    "ap,ap-2,s1,,,gym,U6,,aa:bb:cc:00:02:01,198.18.1.12,root,22\n"
    "ap,ap-3,s2,,,hall,,,,ap3.s2.example,,\n"
    "server,srv-1,s1,,,,,,,198.18.1.2,admin,2222\n"
    "server,srv-2,s2,,,,,,,198.18.2.2,,\n"
)
# A second file: two good rows (a room, an access point) among bad ones.
MIXED = """\
rooms:
  - {id: r102, school: s1}
  - {id: r9, school: s9}
access_points:
  - id: ap-4
    school: s1
    room: r102
    address: 198.18.1.14
    bssids: [aa:bb:cc:00:04:01]
  - {id: ap-5, school: s1, address: 198.18.1.15, mac: not-a-mac}
  - {id: ap-6, school: s1, address: 198.18.1.16, bssids: [aa:bb:cc:00:01:01]}
  - {id: ap-4, school: s1, address: 198.18.1.99}
  - {id: ap-7, school: s1, address: "bad host!", ssh_port: 70000}
servers:
  - {id: srv-1, school: s1, address: 198.18.1.200, adress: typo}
"""
ED25519 = "AAAAC3NzaC1lZDI1NTE5AAAAI"
KEY = HostKey("ssh-ed25519", ED25519 + "OMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl")


def _json(c: Controller, *args: str, token: str | None = None) -> Any:
    done = schoolctl(c.address, *args, "--json", token=token)
    assert done.code == 0, done
    return done.json()


def _by_id(items: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    return {item[key]: item for item in items}


def test_import_list_and_count_the_infrastructure(controller: Controller, tmp_path: Path) -> None:
    c = controller
    district = tmp_path / "district.csv"
    district.write_text(DISTRICT)
    first = schoolctl(c.address, "inventory", "import", str(district))
    assert first.code == 0, first
    assert f"{district}: imported 8 rows: 8 added, 0 updated, 0 unchanged, 0 refused" in first.out
    again = schoolctl(c.address, "inventory", "import", str(district))
    assert "8 rows: 0 added, 0 updated, 8 unchanged, 0 refused" in again.out
    before = _by_id(_json(c, "aps", "list"), "ap_id")
    assert list(before) == ["ap-1", "ap-2", "ap-3"]
    one = before["ap-1"]
    assert (one["school_id"], one["room_id"], one["location"], one["mac"]) == (
        "s1", "r101", "2nd floor", "aa:bb:cc:00:00:01"
    )  # fmt: skip
    assert one["bssids"] == ["aa:bb:cc:00:01:01", "aa:bb:cc:00:01:02"]
    assert (one["state"], one["devices"], one["unseen_for_a_day"]) == ("unknown", 0, True)

    # Bad rows are named by their line; the good ones are stored, nothing is lost.
    mixed = tmp_path / "more.yaml"
    mixed.write_text(MIXED)
    bad = schoolctl(c.address, "inventory", "import", str(mixed))
    assert bad.code == 1, bad
    assert "Traceback" not in bad.err
    lines = bad.err.splitlines()
    assert [line.split(":")[1] for line in lines] == ["3", "10", "11", "12", "13", "15"]
    assert "school s9 is neither in this file nor in the inventory" in lines[0]
    assert "mac 'not-a-mac' is not a MAC address" in lines[1]
    assert "bssid aa:bb:cc:00:01:01 is stored with access point ap-1" in lines[2]
    assert "same access point id as line 5" in lines[3]
    assert "'bad host!' is neither an IP address nor a host name" in lines[4]
    assert "ssh_port '70000' is not a port number" in lines[4]
    assert "unknown field 'adress' in a server" in lines[5]
    assert "8 rows: 2 added, 0 updated, 0 unchanged, 6 refused" in bad.out
    after = _by_id(_json(c, "aps", "list"), "ap_id")
    assert list(after) == ["ap-1", "ap-2", "ap-4", "ap-3"], "by school, then id"
    assert after["ap-1"] == before["ap-1"] and after["ap-4"]["room_id"] == "r102"
    server = _json(c, "servers", "show", "srv-1")
    assert (server["address"], server["ssh_user"], server["ssh_port"]) == (
        "198.18.1.2",
        "admin",
        2222,
    )

    # Imported rooms take lessons.
    lesson = schoolctl(
        c.address, "lessons", "launch", "https://x.example/", "--school", "s1", "--room", "r102"
    )
    assert "room r102 of school s1 has no panel" in lesson.err, lesson

    unreadable = schoolctl(c.address, "inventory", "import", str(tmp_path / "none.csv"))
    assert unreadable.code == 2 and unreadable.err.count("\n") == 1, unreadable
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("kind,id,school\nap,x,s1\n")
    refused = schoolctl(c.address, "inventory", "import", str(wrong))
    assert refused.code == 2 and "unknown columns 'kind'" in refused.err, refused

    # What the probes and the devices' reports would write, in the store itself.
    store = sqlite_stores(c.database)
    try:
        now = time.time()
        store.infra.record_probes(
            [ProbeResult(TargetKind.AP, "ap-2", False, "connection refused", 1.0, now),
             ProbeResult(TargetKind.AP, "ap-1", True, "", 0.1, now),
             ProbeResult(TargetKind.SERVER, "srv-1", True, "host key not trusted", 0.2, now,
                         seen_key=KEY)]
        )  # fmt: skip
    finally:
        store.close()
    # Three panels report over their streams that they are associated with ap-1's
    # second BSSID (written as some drivers do); one more with a BSSID no AP has.
    for device, signal, bssid in (
        ("p1", -50, "AA-BB-CC-00-01-02"),
        ("p2", -70, "aa:bb:cc:00:01:02"),
        ("p3", -61, "aa:bb:cc:00:01:02"),
        ("p4", -40, "aa:bb:cc:99:99:99"),
    ):
        _report_wifi(c, device, bssid, signal)

    def associated() -> dict[str, Any] | None:
        one = _by_id(_json(c, "aps", "list", "--school", "s1"), "ap_id")["ap-1"]
        return one if one["devices"] == 3 else None

    wait_until(associated, 20, "three panels associated with ap-1", step=0.3)
    down = _json(c, "aps", "list", "--down")
    assert [(a["ap_id"], a["reason"]) for a in down] == [("ap-2", "connection refused")]
    one = _by_id(_json(c, "aps", "list", "--school", "s1"), "ap_id")["ap-1"]
    assert (one["state"], one["devices"], one["median_signal_dbm"]) == ("up", 3, -61)
    assert one["unseen_for_a_day"] is False
    table = schoolctl(c.address, "aps", "list")
    assert "not seen by any device for a day" in table.out and "connection refused" in table.out
    # p4's BSSID is no access point's: listed, and pointed at by the list's last line.
    unknown = _json(c, "aps", "unknown")
    assert [
        (u["school_id"], u["bssid"], u["devices"], u["median_signal_dbm"]) for u in unknown
    ] == [("s1", "aa:bb:cc:99:99:99", 1, -40)]
    assert table.out.rstrip().splitlines()[-1] == (
        "1 BSSID seen by devices is not in the inventory: schoolctl aps unknown"
    )
    assert "not in the inventory" not in schoolctl(c.address, "aps", "list", "--json").out
    people = schoolctl(c.address, "aps", "unknown", "--school", "s1")
    assert people.code == 0 and "aa:bb:cc:99:99:99" in people.out, people
    assert _json(c, "aps", "unknown", "--school", "s2") == []

    # A server's key: seen, shown with its fingerprint, pinned by trust.
    shown = _json(c, "servers", "show", "srv-1")
    assert shown["seen_key"] == {"type": "ssh-ed25519", "fingerprint": KEY.fingerprint()}
    assert shown["pinned_key"] is None
    assert "seen-not-trusted" in schoolctl(c.address, "servers", "list").out
    trusted = schoolctl(c.address, "servers", "trust", "srv-1", "--yes")
    assert trusted.code == 0, trusted
    assert f"srv-1: pinned ssh-ed25519 {KEY.fingerprint()}" in trusted.out
    assert _json(c, "servers", "show", "srv-1")["pinned_key"]["fingerprint"] == KEY.fingerprint()
    nothing = schoolctl(c.address, "servers", "trust", "srv-2", "--yes")
    assert nothing.code == 5 and "no host key seen yet" in nothing.err, nothing
    assert schoolctl(c.address, "servers", "show", "srv-9").code == 4

    metrics = c.metrics()
    assert metrics['schoolfleet_access_points{school="s1",state="up"}'] == 1
    assert metrics['schoolfleet_access_points{school="s1",state="down"}'] == 1
    assert metrics['schoolfleet_access_points{school="s1",state="unknown"}'] == 1
    assert metrics['schoolfleet_access_points{school="s2",state="unknown"}'] == 1
    assert metrics['schoolfleet_access_points_unseen{school="s1"}'] == 2
    assert metrics['schoolfleet_devices_on_unknown_bssids{school="s1"}'] == 1
    assert metrics['schoolfleet_devices_on_unknown_bssids{school="s2"}'] == 0
    assert metrics['schoolfleet_servers{school="s1",state="up"}'] == 1
    assert metrics['schoolfleet_servers{school="s2",state="unknown"}'] == 1
    audit = _json(c, "audit", "--action", "servers.trust")
    assert [(e["target"], e["outcome"]) for e in audit] == [("srv-1", "ok")]


def test_school_it_imports_and_sees_only_their_schools(
    controller: Controller, tmp_path: Path
) -> None:
    c = controller
    district = tmp_path / "district.csv"
    district.write_text(DISTRICT)
    assert schoolctl(c.address, "inventory", "import", str(district)).code == 0
    it2 = c.create_user("it2", "school-it", "s2").token
    moved = tmp_path / "moved.csv"
    moved.write_text(
        HEADER
        + "ap,ap-3,s2,,,new hall,,,,ap3.s2.example,,\n"
        + "ap,ap-9,s1,,,,,,,198.18.1.19,,\n"
        # Moving s1's access point into s2 needs s1 too.
        + "ap,ap-1,s2,,,,,,,198.18.1.11,,\n"
    )
    done = schoolctl(c.address, "inventory", "import", str(moved), token=it2)
    assert done.code == 1, done
    lines = done.err.splitlines()
    assert [line.split(":")[1] for line in lines] == ["3", "4"]
    assert "user it2 (school-it) may not inventory.import in school s1" in lines[0]
    # Which school holds ap-1 is not said to another school's user.
    assert lines[1].endswith("access point ap-1 belongs to another school"), lines[1]
    assert "3 rows: 0 added, 1 updated, 0 unchanged, 2 refused" in done.out
    seen = _json(c, "aps", "list", token=it2)
    assert [(a["ap_id"], a["location"]) for a in seen] == [("ap-3", "new hall")]
    assert [s["server_id"] for s in _json(c, "servers", "list", token=it2)] == ["srv-2"]
    other = schoolctl(c.address, "aps", "list", "--school", "s1", token=it2)
    assert other.code == 6 and "may not aps.list in school s1" in other.err
    assert schoolctl(c.address, "servers", "show", "srv-1", token=it2).code == 4
    assert _json(c, "aps", "unknown", token=it2) == []
    assert schoolctl(c.address, "aps", "unknown", "--school", "s1", token=it2).code == 6
    denied = _json(c, "audit", "--actor", "it2", "--outcome", "denied")
    assert ("inventory.import", "s1") in {(e["action"], e["school_id"]) for e in denied}


def _report_wifi(c: Controller, device_id: str, bssid: str, signal: float) -> None:
    """A panel's stream: Hello, then a heartbeat with a full network report naming its
    Wi-Fi association, as the agent sends it; waits until the controller acks it."""
    beat = wire.heartbeat(1)
    beat.heartbeat.condition = fleet_pb2.CONDITION_OK
    beat.heartbeat.network.wifi.add(interface="wlan0", bssid=bssid, signal_dbm=signal)
    with wire.RawStream(c.address) as stream:
        stream.send(wire.hello(device_id, "s1", "r101"))
        stream.next()  # Welcome
        stream.send(beat)
        wait_until(
            lambda: stream.next().HasField("ack") or None, 10, f"{device_id}'s heartbeat acked"
        )
