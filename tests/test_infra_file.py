"""The inventory import's rules: one row, rows together with the store, and reading
CSV and YAML files with the line each row starts on."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inventory.infra import AccessPoint, Room, School, Server
from inventory.infra_file import InventoryFileError, open_inventory, parse_inventory
from inventory.infra_rows import (
    COLUMNS,
    InventoryRow,
    StoredInventory,
    check_inventory,
    mac_address,
    parse_item,
)
from inventory.row_fields import RowError

HEADER = ",".join(COLUMNS)
NOTHING = StoredInventory(frozenset(), frozenset(), {})


def ap_fields(**changes: object) -> dict[str, object]:
    row: dict[str, object] = {"id": "ap-1", "school": "s1", "address": "10.1.0.11"}
    row.update(changes)
    return {k: v for k, v in row.items() if v is not None}


def ap_of(**changes: object) -> AccessPoint:
    row = parse_item(3, "ap", ap_fields(**changes))
    assert isinstance(row, InventoryRow), row
    assert isinstance(row.item, AccessPoint)
    return row.item


def error_of(kind: str = "ap", **changes: object) -> str:
    fields = ap_fields(**changes) if kind == "ap" else {k: v for k, v in changes.items()}
    row = parse_item(7, kind, fields)
    assert isinstance(row, RowError), row
    assert row.line == 7
    return row.message


def test_each_kind_parses_with_defaults() -> None:
    assert ap_of() == AccessPoint("ap-1", "s1", "10.1.0.11")
    school = parse_item(2, "School", {"id": "1234", "name": " School 1234 "})
    assert school == InventoryRow(2, School("1234", "School 1234"))
    assert parse_item(3, "room", {"id": "r101", "school": "1234"}) == InventoryRow(
        3, Room("1234", "r101")
    )
    server = parse_item(4, " server ", {"id": "srv", "school": "1234", "address": "10.0.0.2"})
    assert server == InventoryRow(4, Server("srv", "1234", "10.0.0.2", "root", 22))


@pytest.mark.parametrize(
    ("written", "normal"),
    [("AA:BB:CC:00:11:22", "aa:bb:cc:00:11:22"), ("aa-bb-cc-00-11-22", "aa:bb:cc:00:11:22"),
     ("aabb.cc00.1122", "aa:bb:cc:00:11:22"), ("AABBCC001122", "aa:bb:cc:00:11:22"),
     ("aa:bb-cc:00:11:22", None), ("aa:bb:cc:00:11", None), ("gg:bb:cc:00:11:22", None),
     ("aa:bb:cc:00:11:22:33", None)],
)  # fmt: skip
def test_mac_addresses_are_normalised(written: str, normal: str | None) -> None:
    assert mac_address(written) == normal


def test_macs_and_bssids() -> None:
    ap = ap_of(mac="AA-BB-CC-00-00-01", bssids="AA:BB:CC:00:01:02; aa:bb:cc:00:01:01 aabbcc000102")
    assert ap.mac == "aa:bb:cc:00:00:01"
    assert ap.bssids == ("aa:bb:cc:00:01:01", "aa:bb:cc:00:01:02")
    assert ap_of(bssids=["aa:bb:cc:00:01:01"]).bssids == ("aa:bb:cc:00:01:01",)
    assert error_of(mac="zz") == "mac 'zz' is not a MAC address (aa:bb:cc:dd:ee:ff)"
    assert error_of(bssids="aa:bb:cc:00:01:01;nope") == (
        "bssid 'nope' is not a MAC address (aa:bb:cc:dd:ee:ff)"
    )
    assert error_of(bssids={"a": 1}) == 'bssids is an object ({"a": 1}), not a string'
    many = " ".join(f"aa:bb:cc:00:{n // 256:02x}:{n % 256:02x}" for n in range(65))
    assert error_of(bssids=many) == "65 bssids, at most 64"


@pytest.mark.parametrize(
    ("address", "stored"),
    [("10.1.0.11", "10.1.0.11"), ("::ffff:10.1.0.11", "10.1.0.11"), ("fe80::1", "fe80::1"),
     ("AP-1.School.Example.", "ap-1.school.example"), ("ap1", "ap1"), ("198.18.0.5", "198.18.0.5")],
)  # fmt: skip
def test_addresses_are_ip_addresses_or_host_names(address: str, stored: str) -> None:
    assert ap_of(address=address).address == stored


@pytest.mark.parametrize(
    ("address", "problem"),
    [("300.1.1.1", "'300.1.1.1' is not an IP address"),
     ("0.0.0.0", "'0.0.0.0' is not an address a device can be reached at"),
     ("ff02::1", "'ff02::1' is not an address a device can be reached at"),
     ("ap_1.school", "'ap_1.school' is neither an IP address nor a host name"),
     ("a..b", "'a..b' is neither"), ("-ap.school", "'-ap.school' is neither"),
     ("10.0.0", "'10.0.0' is not an IP address"), ("host.123", "'host.123' is neither"),
     ("школа.рф", "'школа.рф' is neither"), ("a" * 64 + ".org", "is neither")],
)  # fmt: skip
def test_bad_addresses_are_named(address: str, problem: str) -> None:
    message = error_of(address=address)
    assert message.startswith("address ") and problem in message, message


def test_ports_users_ids_and_text() -> None:
    assert ap_of(ssh_port="2222", ssh_user="admin").ssh_port == 2222
    for port in ("0", "65536", "x", "-1", "22.0"):
        assert error_of(ssh_port=port) == f"ssh_port {port!r} is not a port number (1-65535)"
    assert error_of(ssh_user="bad user") == (
        "ssh_user 'bad user' is not a user name (letters, digits, _ . -)"
    )
    assert error_of(id="ap 1") == (
        "id 'ap 1' is not a valid id (1-64 letters, digits and ._:-, starting with a letter "
        "or digit)"
    )
    assert error_of(school=None) == "school is missing"
    assert error_of(address="") == "address is empty"
    assert (
        error_of(location="a\nb") == "location 'a\\nb' contains a control character or line break"
    )
    assert error_of(model="m" * 201) == "model is 201 characters long, at most 200"


def test_a_row_gets_only_its_kinds_fields() -> None:
    assert error_of("room", id="r1", school="s1", name="Physics") == (
        "name does not apply to a room (its fields: id, school)"
    )
    assert error_of(adress="10.0.0.1") == (
        "unknown field 'adress' in an access point (its fields: id, school, room, location, "
        "model, mac, bssids, address, ssh_user, ssh_port)"
    )
    assert error_of("router", id="x") == "type 'router' is not one of school, room, ap, server"
    assert error_of("", id="x") == "type empty is not one of school, room, ap, server"
    # Every problem of a row in one message.
    assert error_of(id="", mac="x", ssh_port="0").count(";") == 2


def rows_of(*rows: tuple[str, dict[str, object]]) -> list[InventoryRow | RowError]:
    return [parse_item(n, kind, fields) for n, (kind, fields) in enumerate(rows, 2)]


def refused(
    rows: list[InventoryRow | RowError], stored: StoredInventory | None = NOTHING
) -> dict[int, str]:
    good, bad = check_inventory(rows, stored)
    assert sorted([r.line for r in good] + [e.line for e in bad]) == [r.line for r in rows]
    return {e.line: e.message for e in bad}


def test_an_id_twice_in_the_file_is_refused_the_second_time() -> None:
    rows = rows_of(
        ("school", {"id": "s1"}),
        ("room", {"id": "r1", "school": "s1"}),
        ("ap", ap_fields()),
        ("school", {"id": "s1", "name": "again"}),
        ("room", {"id": "r1", "school": "s1"}),
        ("room", {"id": "r1", "school": "s2"}),
        ("ap", ap_fields(address="10.0.0.9")),
        ("server", {"id": "ap-1", "school": "s1", "address": "10.0.0.2"}),
    )
    assert refused(rows, None) == {
        5: "same school id as line 2",
        6: "same room id as line 3",
        8: "same access point id as line 4",
    }


def test_a_school_must_be_in_the_file_or_stored() -> None:
    rows = rows_of(
        ("room", {"id": "r1", "school": "s2"}),
        ("ap", ap_fields(school="s2", room="r1")),
        ("server", {"id": "srv", "school": "s3", "address": "10.0.0.2"}),
        ("school", {"id": "s3"}),
    )
    assert refused(rows) == {
        2: "school s2 is neither in this file nor in the inventory",
        3: "school s2 is neither in this file nor in the inventory; "
        "room r1 of school s2 is not in the inventory",
    }
    stored = StoredInventory(frozenset({"s2"}), frozenset(), {})
    assert refused(rows, stored) == {}
    # schoolctl checks the file alone: the store may have them.
    assert refused(rows, None) == {}


def test_an_access_points_room_must_be_in_the_file_or_stored() -> None:
    rows = rows_of(("ap", ap_fields(room="r9")), ("ap", ap_fields(id="ap-2", room="r1")))
    stored = StoredInventory(frozenset({"s1"}), frozenset({("s1", "r1")}), {})
    assert refused(rows, stored) == {2: "room r9 of school s1 is not in the inventory"}


def test_a_bssid_claimed_twice_is_refused_the_second_time() -> None:
    bssid = "aa:bb:cc:00:00:01"
    rows = rows_of(
        ("ap", ap_fields(bssids=bssid)),
        ("ap", ap_fields(id="ap-2", bssids=f"{bssid} aa:bb:cc:00:00:02")),
    )
    stored = StoredInventory(frozenset({"s1"}), frozenset(), {})
    assert refused(rows, stored) == {3: f"bssid {bssid} is claimed by access point ap-1 on line 2"}


def test_a_stored_bssid_moves_only_if_its_access_point_gives_it_up() -> None:
    a, b = "aa:bb:cc:00:00:01", "aa:bb:cc:00:00:02"
    stored = StoredInventory(frozenset({"s1"}), frozenset(), {a: "ap-old", b: "ap-1"})
    assert refused(rows_of(("ap", ap_fields(bssids=a))), stored) == {
        2: f"bssid {a} is stored with access point ap-old"
    }
    assert refused(rows_of(("ap", ap_fields(bssids=b))), stored) == {}
    moved = rows_of(("ap", ap_fields(bssids=a)), ("ap", ap_fields(id="ap-old", bssids="")))
    assert refused(moved, stored) == {}
    # ap-old's row is refused, so it keeps the BSSID, so ap-1 cannot have it.
    kept = rows_of(
        ("ap", ap_fields(bssids=a)), ("ap", ap_fields(id="ap-old", school="s9", bssids=""))
    )
    assert refused(kept, stored) == {
        2: f"bssid {a} is stored with access point ap-old",
        3: "school s9 is neither in this file nor in the inventory",
    }


def read(text: str, fmt: str = "csv") -> list[InventoryRow | RowError]:
    return list(
        parse_inventory(f"i.{fmt}", text.encode(), "csv" if fmt == "csv" else "yaml").rows()
    )


def test_csv_rows_report_their_line() -> None:
    text = (
        f"{HEADER}\n"
        "school,1234,,,School 1234,,,,,,,\n"
        "\n"
        'ap,ap-1,1234,,,"2nd floor, east",U6,,"aa:bb:cc:00:00:01;aa:bb:cc:00:00:02",10.1.0.11,,\n'
        "room,r101,1234,,Physics,,,,,,,\n"
        "server,srv-1,1234,,,,,,,10.1.0.2,admin,2222,,\n"
        "server,srv-2,1234,,,,,,,10.1.0.3\n"
    )
    rows = read(text)
    assert [(r.line, type(r).__name__) for r in rows] == [
        (2, "InventoryRow"), (4, "InventoryRow"), (5, "RowError"), (6, "InventoryRow"),
        (7, "RowError"),
    ]  # fmt: skip
    assert rows[1] == InventoryRow(
        4,
        AccessPoint("ap-1", "1234", "10.1.0.11", "", "2nd floor, east", "U6", "",
                    ("aa:bb:cc:00:00:01", "aa:bb:cc:00:00:02")),
    )  # fmt: skip
    assert rows[2] == RowError(5, "name does not apply to a room (its fields: id, school)")
    assert rows[4] == RowError(
        7, "row has 10 values but the header has 12 columns (quote values that contain commas)"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [("type,id,school,adress\n", "i.csv:1: the header has unknown columns 'adress' (the first"),
     ("id,school\n", "i.csv:1: the header lacks required columns type ("),
     ("\n\ntype;id;school\n", "i.csv:3: the header lacks required columns type, id; has unknown "
      "columns 'type;id;school' (values are separated by ';', but a CSV file separates them by "
      "',')"),
     ("type,id,school\nap,ap-1,s1\nroom,r1,s1\n",
      "i.csv:1: the header lacks columns address (ap rows need it)"),
     ("type,id\nroom,r1\nserver,x\n",
      "i.csv:1: the header lacks columns school (room and server rows need it); address "
      "(server rows need it)"),
     ("type,id,type\n", "i.csv:1: the header names columns more than once: type"),
     (" \n", "i.csv is empty")],
)  # fmt: skip
def test_a_csv_with_the_wrong_columns_is_refused_whole(text: str, message: str) -> None:
    with pytest.raises(InventoryFileError) as e:
        read(text)
    assert str(e.value).startswith(message), str(e.value)


YAML = """\
# the schools of district 7
schools:
  - {id: 0123, name: School 123}
rooms:
  - id: r101
    school: 0123
access_points:
  - id: ap-1
    school: 0123
    room: r101
    address: 10.1.0.11
    bssids: [12:34:56:12:34:56, "aa:bb:cc:dd:ee:ff"]
    ssh_port: 22
  - id: ap-2
    id: ap-3
  - just text
  - {id: ap-4, school: 0123, address: ap4.example, bssids: 12:34:56:12:34:57 12:34:56:12:34:58}
servers:
"""


def test_yaml_rows_report_the_line_of_their_mapping_and_keep_scalars_as_written() -> None:
    rows = read(YAML, "yaml")
    assert [r.line for r in rows] == [3, 5, 8, 14, 16, 17]
    assert rows[0] == InventoryRow(3, School("0123", "School 123"))
    assert rows[1] == InventoryRow(5, Room("0123", "r101"))
    ap = rows[2]
    assert isinstance(ap, InventoryRow) and isinstance(ap.item, AccessPoint)
    # YAML 1.1 would read 12:34:56:12:34:56 as a number and 0123 as 83.
    assert ap.item.bssids == ("12:34:56:12:34:56", "aa:bb:cc:dd:ee:ff")
    assert rows[3] == RowError(14, "field id given more than once")
    assert rows[4] == RowError(
        16, "expected an access point as a mapping, not the value 'just text'"
    )
    assert isinstance(rows[5], InventoryRow)


def test_yaml_aliases_of_lists_are_refused() -> None:
    text = (
        "schools: [{id: s1}]\naccess_points:\n"
        "  - {id: a1, school: s1, address: 10.0.0.1, bssids: &b [aa:bb:cc:dd:ee:01]}\n"
        "  - {id: a2, school: s1, address: 10.0.0.2, bssids: *b}\n"
    )
    rows = read(text, "yaml")
    assert isinstance(rows[1], InventoryRow)
    assert rows[2] == RowError(4, "a YAML alias (*name) repeats a list or mapping; write it out")


@pytest.mark.parametrize(
    ("text", "message"),
    [("schools: [\n", "i.yaml:2:1: not valid YAML"),
     ("- id: s1\n", "i.yaml: expected a mapping of sections: schools, rooms, access_points, "
      "servers, not a list"),
     ("aps: []\n", "i.yaml:1: unknown section 'aps' (expected a mapping of sections"),
     ("schools: []\nschools: []\n", "i.yaml:2: section schools is given twice"),
     ("servers: {id: x}\n", "i.yaml:1: section servers must be a list, not a mapping"),
     ("# nothing\n", "i.yaml: expected a mapping of sections: schools, rooms, access_points, "
      "servers, not an empty document"),
     ("a: 1\n---\nb: 2\n", "i.yaml:2:1: not valid YAML (but found another document)")],
)  # fmt: skip
def test_yaml_that_is_not_an_inventory_is_refused_whole(text: str, message: str) -> None:
    with pytest.raises(InventoryFileError) as e:
        read(text, "yaml")
    assert str(e.value).startswith(message), str(e.value)


def test_whole_file_problems(tmp_path: Path) -> None:
    (tmp_path / "i.txt").write_text(HEADER)
    with pytest.raises(InventoryFileError, match=r"i\.txt: an inventory is a \.csv or \.yaml"):
        open_inventory(tmp_path / "i.txt")
    with pytest.raises(InventoryFileError, match=r"cannot read .*nope\.yml: No such file"):
        open_inventory(tmp_path / "nope.yml")
    (tmp_path / "w.csv").write_bytes(f"{HEADER}\n".encode() + "Школа".encode("cp1251"))
    with pytest.raises(InventoryFileError, match=r"w\.csv:2: not UTF-8 text \(byte 0xd8\)"):
        open_inventory(tmp_path / "w.csv")
    (tmp_path / "i.YML").write_text("schools: [{id: s1}]\n")
    assert [r.line for r in open_inventory(tmp_path / "i.YML").rows()] == [1]


# Round trip: any valid access point written to CSV reads back the same.

ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}", fullmatch=True)
octets = st.integers(0, 255)
macs = st.lists(octets, min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b))
text = st.text(st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp")), max_size=200).map(
    str.strip
)
addresses = st.one_of(
    st.tuples(st.integers(1, 223), octets, octets, st.integers(1, 254)).map(
        lambda p: ".".join(map(str, p))
    ),
    st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9](\.[a-z]{2,6}){1,3}", fullmatch=True),
)
aps = st.builds(
    AccessPoint,
    ap_id=ids,
    school_id=ids,
    address=addresses,
    room_id=st.one_of(st.just(""), ids),
    location=text,
    model=text,
    mac=st.one_of(st.just(""), macs),
    bssids=st.lists(macs, max_size=5, unique=True).map(lambda b: tuple(sorted(b))),
    ssh_user=st.sampled_from(["", "root", "admin", "ubnt"]),
    ssh_port=st.integers(1, 65535),
)


@given(aps)
@settings(max_examples=200)
def test_any_access_point_written_to_csv_reads_back_the_same(ap: AccessPoint) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    writer.writerow(
        ["ap", ap.ap_id, ap.school_id, ap.room_id, "", ap.location, ap.model, ap.mac,
         ";".join(ap.bssids), ap.address, ap.ssh_user, str(ap.ssh_port)]
    )  # fmt: skip
    assert read(buffer.getvalue()) == [InventoryRow(2, ap)]
