"""The rules of the infrastructure inventory's rows: schools, rooms, access points and
servers, each from a CSV record or a YAML mapping.

``parse_item`` applies the rules of one row and gives an ``InventoryRow`` or a
``RowError`` naming every field that is wrong; ``check_inventory`` applies the rules
that need the other rows and what is stored (ids given twice, a school or room that
does not exist, a BSSID two access points claim). Both are pure, like the schedule's
``parse_row`` and ``check_rows``; the file reader is ``inventory.infra_file``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from inventory.infra import AccessPoint, Room, School, Server
from inventory.model import ip_address
from inventory.row_fields import RowError, id_field, line_field, quoted, text_field


class ItemKind(enum.StrEnum):
    """What a row describes: its CSV ``type``."""

    SCHOOL = "school"
    ROOM = "room"
    AP = "ap"
    SERVER = "server"


Item = School | Room | AccessPoint | Server

# The CSV header's columns: the union of every kind's fields, and ``type``.
COLUMNS = (
    "type",
    "id",
    "school",
    "room",
    "name",
    "location",
    "model",
    "mac",
    "bssids",
    "address",
    "ssh_user",
    "ssh_port",
)
REQUIRED_COLUMNS = ("type", "id")
FIELDS: Mapping[ItemKind, tuple[str, ...]] = {
    ItemKind.SCHOOL: ("id", "name"),
    ItemKind.ROOM: ("id", "school"),
    ItemKind.AP: tuple(c for c in COLUMNS if c not in ("type", "name")),
    ItemKind.SERVER: ("id", "school", "address", "ssh_user", "ssh_port"),
}
# The fields a row of each kind cannot do without (its CSV needs the columns).
NEEDED: Mapping[ItemKind, tuple[str, ...]] = {
    ItemKind.SCHOOL: ("id",),
    ItemKind.ROOM: ("id", "school"),
    ItemKind.AP: ("id", "school", "address"),
    ItemKind.SERVER: ("id", "school", "address"),
}
# YAML's sections, {schools: [...], ...}, and the kind of their rows.
SECTIONS: Mapping[str, ItemKind] = {
    "schools": ItemKind.SCHOOL,
    "rooms": ItemKind.ROOM,
    "access_points": ItemKind.AP,
    "servers": ItemKind.SERVER,
}
WORDS: Mapping[ItemKind, str] = {
    ItemKind.SCHOOL: "school",
    ItemKind.ROOM: "room",
    ItemKind.AP: "access point",
    ItemKind.SERVER: "server",
}
# "a school", "an access point": as messages name a row of the kind.
A_ROW: Mapping[ItemKind, str] = {
    k: ("an " if w[0] in "aeiou" else "a ") + w for k, w in WORDS.items()
}
MAX_BSSIDS = 64

_MAC = re.compile(
    r"[0-9a-f]{2}([:-])[0-9a-f]{2}(?:\1[0-9a-f]{2}){4}|[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}"
    r"|[0-9a-f]{12}",
    re.IGNORECASE,
)
_HOST_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.IGNORECASE)
_USER = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
_BSSID_SEPARATORS = re.compile(r"[\s;,]+")


@dataclass(frozen=True, slots=True)
class InventoryRow:
    """A row that passed the row rules, and the 1-based line it starts on."""

    line: int
    item: Item


@dataclass(frozen=True, slots=True)
class StoredInventory:
    """What ``check_inventory`` needs of the store, for the rows at hand."""

    schools: AbstractSet[str]
    rooms: AbstractSet[tuple[str, str]]
    # BSSID -> the access point it is stored with.
    bssids: Mapping[str, str]


def kind_of(item: Item) -> ItemKind:
    if isinstance(item, School):
        return ItemKind.SCHOOL
    if isinstance(item, Room):
        return ItemKind.ROOM
    return ItemKind.AP if isinstance(item, AccessPoint) else ItemKind.SERVER


def item_id(item: Item) -> str:
    """The row's own id (a room's within its school)."""
    if isinstance(item, School):
        return item.school_id
    if isinstance(item, Room):
        return item.room_id
    return item.ap_id if isinstance(item, AccessPoint) else item.server_id


def mac_address(text: str) -> str | None:
    """``AA-BB-CC-DD-EE-FF``, ``aabb.ccdd.eeff`` or ``aabbccddeeff`` as
    ``aa:bb:cc:dd:ee:ff``; None if ``text`` is no MAC address."""
    if _MAC.fullmatch(text) is None:
        return None
    digits = re.sub(r"[^0-9a-f]", "", text.lower())
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def host_name(text: str) -> bool:
    """Whether ``text`` is a host name by its syntax (letters, digits and - in labels of
    at most 63, at most 253 in all, a last label that is not a number)."""
    name = text.removesuffix(".")
    labels = name.split(".")
    return (
        0 < len(name) <= 253
        and all(_HOST_LABEL.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()
    )


def parse_item(line: int, kind: str, fields: Mapping[str, object]) -> InventoryRow | RowError:
    """Apply the rules of one row of ``kind`` (its CSV type, or its YAML section's);
    every problem is named in one message. ``None`` and "" are absent."""
    problems: list[str] = []
    try:
        known = ItemKind(kind.strip().lower())
    except ValueError:
        shown = quoted(kind) if kind.strip() else "empty"
        return RowError(line, f"type {shown} is not one of school, room, ap, server")
    own = FIELDS[known]
    for name, value in sorted(fields.items()):
        if name in own or value is None or (isinstance(value, str) and not value.strip()):
            continue
        what = (
            f"{name} does not apply to" if name in COLUMNS else f"unknown field {quoted(name)} in"
        )
        problems.append(f"{what} {A_ROW[known]} (its fields: {', '.join(own)})")
    item = _ITEMS[known](fields, problems)
    return RowError(line, "; ".join(problems)) if problems else InventoryRow(line, item)


def _school(fields: Mapping[str, object], problems: list[str]) -> School:
    school_id = id_field(fields, "id", problems)
    return School(school_id, line_field(fields, "name", problems, need=False))


def _room(fields: Mapping[str, object], problems: list[str]) -> Room:
    room_id = id_field(fields, "id", problems)
    return Room(id_field(fields, "school", problems), room_id)


def _access_point(fields: Mapping[str, object], problems: list[str]) -> AccessPoint:
    ap_id = id_field(fields, "id", problems)
    school_id = id_field(fields, "school", problems)
    room_id = id_field(fields, "room", problems, need=False)
    location = line_field(fields, "location", problems, need=False)
    model = line_field(fields, "model", problems, need=False)
    mac = text_field(fields, "mac", problems, need=False)
    if mac:
        normal = mac_address(mac)
        if normal is None:
            problems.append(f"mac {quoted(mac)} is not a MAC address (aa:bb:cc:dd:ee:ff)")
        mac = normal or ""
    return AccessPoint(
        ap_id=ap_id,
        school_id=school_id,
        address=_address(fields, problems),
        room_id=room_id,
        location=location,
        model=model,
        mac=mac,
        bssids=_bssids(fields.get("bssids"), problems),
        ssh_user=_user(fields, problems),
        ssh_port=_port(fields, problems),
    )


def _server(fields: Mapping[str, object], problems: list[str]) -> Server:
    return Server(
        server_id=id_field(fields, "id", problems),
        school_id=id_field(fields, "school", problems),
        address=_address(fields, problems),
        # A school server is managed as root unless the row says otherwise.
        ssh_user=_user(fields, problems) or "root",
        ssh_port=_port(fields, problems),
    )


_ITEMS: Mapping[ItemKind, Callable[[Mapping[str, object], list[str]], Item]] = {
    ItemKind.SCHOOL: _school,
    ItemKind.ROOM: _room,
    ItemKind.AP: _access_point,
    ItemKind.SERVER: _server,
}


def _address(fields: Mapping[str, object], problems: list[str]) -> str:
    text = text_field(fields, "address", problems)
    if not text:
        return ""
    try:
        return ip_address(text)
    except ValueError as e:
        looks_like_ip = ":" in text or re.fullmatch(r"[0-9.]+", text) is not None
        if looks_like_ip:
            problems.append(f"address {e}")
            return ""
    if not host_name(text):
        problems.append(
            f"address {quoted(text)} is neither an IP address nor a host name "
            "(letters, digits and - in dot-separated labels)"
        )
        return ""
    return text.removesuffix(".").lower()


def _bssids(value: object, problems: list[str]) -> tuple[str, ...]:
    """A list, or text separated by spaces, ';' or ','; sorted, each once."""
    if value is None:
        return ()
    words: list[object] = []
    if isinstance(value, str):
        words = [w for w in _BSSID_SEPARATORS.split(value) if w]
    elif isinstance(value, list):
        words = list(value)
    else:
        text_field({"bssids": value}, "bssids", problems)
        return ()
    found: set[str] = set()
    for word in words:
        normal = mac_address(word) if isinstance(word, str) else None
        if normal is None:
            shown = quoted(word) if isinstance(word, str) else repr(word)
            problems.append(f"bssid {shown} is not a MAC address (aa:bb:cc:dd:ee:ff)")
        else:
            found.add(normal)
    if len(found) > MAX_BSSIDS:
        problems.append(f"{len(found)} bssids, at most {MAX_BSSIDS}")
    return tuple(sorted(found))


def _user(fields: Mapping[str, object], problems: list[str]) -> str:
    user = text_field(fields, "ssh_user", problems, need=False)
    if user and _USER.fullmatch(user) is None:
        problems.append(f"ssh_user {quoted(user)} is not a user name (letters, digits, _ . -)")
        return ""
    return user


def _port(fields: Mapping[str, object], problems: list[str]) -> int:
    value = fields.get("ssh_port")
    if isinstance(value, int) and not isinstance(value, bool):
        return _port({"ssh_port": str(value)}, problems)
    text = text_field(fields, "ssh_port", problems, need=False)
    if not text:
        return 22
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        problems.append(f"ssh_port {quoted(text)} is not a port number (1-65535)")
        return 22
    return int(text)


def check_inventory(
    rows: Iterable[InventoryRow | RowError], stored: StoredInventory | None
) -> tuple[list[InventoryRow], list[RowError]]:
    """Apply the rules that need the other rows; return the rows that pass and the errors,
    each in the source's order (RowErrors in ``rows`` are passed through).

    A row is refused when an earlier row of the file has its kind and id (a room's
    within its school); when its school (a room's, an access point's, a server's)
    is neither a good school row of the file nor stored; when an access point's room
    is neither a good room row nor stored; and when it claims a BSSID that an earlier
    access point row claims, or one stored with another access point whose row in
    the file does not give it up. ``stored`` None: the file alone is checked (what
    schoolctl does before sending; the controller checks again with the store).
    """
    items = list(rows)
    parsed = [r for r in items if isinstance(r, InventoryRow)]
    problems: list[list[str]] = [[] for _ in parsed]
    first: dict[tuple[ItemKind, str, str], int] = {}
    for row, own in zip(parsed, problems, strict=True):
        key = _key(row.item)
        if key in first:
            own.append(f"same {WORDS[key[0]]} id as line {first[key]}")
        else:
            first[key] = row.line
    schools = {r.item.school_id for r, own in zip(parsed, problems, strict=True) if _good(r, own)}
    rooms: set[tuple[str, str]] = set()
    for row, own in zip(parsed, problems, strict=True):
        item = row.item
        if not isinstance(item, School):
            _check_school(item.school_id, schools, stored, own)
        if isinstance(item, Room) and not own:
            rooms.add((item.school_id, item.room_id))
    _check_access_points(parsed, problems, rooms, stored)
    verdicts = iter(problems)
    good: list[InventoryRow] = []
    bad: list[RowError] = []
    for entry in items:
        if isinstance(entry, RowError):
            bad.append(entry)
            continue
        own = next(verdicts)
        if own:
            bad.append(RowError(entry.line, "; ".join(own)))
        else:
            good.append(entry)
    return good, bad


def _key(item: Item) -> tuple[ItemKind, str, str]:
    """What an id is unique within: a room's within its school, the others' everywhere."""
    return (kind_of(item), item.school_id if isinstance(item, Room) else "", item_id(item))


def _good(row: InventoryRow, problems: list[str]) -> bool:
    return isinstance(row.item, School) and not problems


def _check_school(
    school: str, schools: set[str], stored: StoredInventory | None, problems: list[str]
) -> None:
    if school not in schools and stored is not None and school not in stored.schools:
        problems.append(f"school {school} is neither in this file nor in the inventory")


def _check_access_points(
    parsed: list[InventoryRow],
    problems: list[list[str]],
    rooms: set[tuple[str, str]],
    stored: StoredInventory | None,
) -> None:
    claimed: dict[str, tuple[int, str]] = {}
    aps: list[tuple[AccessPoint, list[str]]] = []
    for row, own in zip(parsed, problems, strict=True):
        ap = row.item
        if not isinstance(ap, AccessPoint):
            continue
        aps.append((ap, own))
        room = (ap.school_id, ap.room_id)
        if ap.room_id and room not in rooms and stored is not None and room not in stored.rooms:
            own.append(f"room {ap.room_id} of school {ap.school_id} is not in the inventory")
        for bssid in ap.bssids:
            line, owner = claimed.setdefault(bssid, (row.line, ap.ap_id))
            if owner != ap.ap_id:
                own.append(f"bssid {bssid} is claimed by access point {owner} on line {line}")
    if stored is None:
        return
    # A stored BSSID moves only if its access point's row in the file, which passes,
    # gives it up; each refusal may keep more BSSIDs where they are, hence the loop.
    in_file = {ap.ap_id: (ap, own) for ap, own in reversed(aps)}

    def kept(bssid: str, ap: AccessPoint) -> str | None:
        owner = stored.bssids.get(bssid)
        if owner is None or owner == ap.ap_id:
            return None
        theirs = in_file.get(owner)
        return owner if theirs is None or theirs[1] or bssid in theirs[0].bssids else None

    changed = True
    while changed:
        changed = False
        for ap, own in aps:
            if own:
                continue
            for bssid in ap.bssids:
                holder = kept(bssid, ap)
                if holder is not None:
                    own.append(f"bssid {bssid} is stored with access point {holder}")
                    changed = True
