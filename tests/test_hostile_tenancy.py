"""A school's IT user against the admin API: nothing of another school shows.

Every list is scoped like its Get (a rollout that touches another school is not
listed); and an id of another school's device, token, rollout or server answers
exactly as an id that does not exist, both audited, so that a school-it user
cannot even learn what exists elsewhere. The methods are taken from AdminService's
descriptor: a method added later is held to the same rules.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import text_format
from google.protobuf.message import Message

from protos.schoolfleet.v1 import admin_pb2
from tests.hostile_admin import (
    MARK,
    OURS,
    SERVICE,
    THEIRS,
    City,
    admin_methods,
    audit_rows,
    request_of,
    start_city,
)

pytestmark = pytest.mark.e2e

NOT_FOUND, DENIED = grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Iterator[City]:
    with start_city(tmp_path_factory.mktemp("tenancy")) as city:
        yield city


def _listing(name: str) -> bool:
    return name.startswith("List") or name == "FleetStatus"


def test_every_list_shows_nothing_of_another_school(city: City) -> None:
    lists = [m for m in admin_methods() if _listing(m.name)]
    assert len(lists) >= 12, [m.name for m in lists]
    seen: dict[str, str] = {}
    for method in lists:
        answer = city.call(method.name, request_of(method))
        if method.name == "ListUsers":
            # Central-ops only: refused, shows nothing.
            assert answer.code == DENIED, answer
            continue
        assert answer.code == grpc.StatusCode.OK, (method.name, answer)
        assert answer.response is not None
        text = text_format.MessageToString(answer.response)
        seen[method.name] = text
        assert MARK not in text, f"{method.name} shows another school's data:\n{text}"
    # The lists do show the caller's own school (the seed reached them).
    for name in ("ListDevices", "ListRollouts", "ListEnrollTokens", "ListAccessPoints"):
        assert OURS in seen[name] or "-a-" in seen[name], (name, seen[name])
    # The rollout over both schools is refused by Get, and so it is not listed.
    shared = int(city.theirs["shared rollout"])
    got = city.call("GetRollout", admin_pb2.GetRolloutRequest(rollout_id=shared))
    assert got.code == NOT_FOUND, got
    listed = city.call("ListRollouts").response
    assert isinstance(listed, admin_pb2.ListRolloutsResponse)
    assert [r.rollout_id for r in listed.rollouts] == [int(city.ours["rollout"])]
    # Central ops see every rollout.
    every = city.ok("ListRollouts", admin_pb2.ListRolloutsRequest())
    assert isinstance(every, admin_pb2.ListRolloutsResponse)
    assert len(every.rollouts) == 3


# The request field that names the target, for each method that takes an id.
_ID_FIELDS = ("device_id", "token_id", "rollout_id", "server_id")


def _id_fields(method: str) -> list[str]:
    """The id fields of a method's request, in the order the message declares them: the
    first names what the call is about, a later one something inside it (a rollout's host)."""
    fields = SERVICE.methods_by_name[method].input_type.fields
    return [f.name for f in fields if f.name in _ID_FIELDS]


def _id_methods() -> list[tuple[str, str]]:
    return [(m.name, ids[0]) for m in admin_methods() if (ids := _id_fields(m.name))]


def _request(method: str, field: str, value: str, **others: str) -> Message:
    request = request_of(SERVICE.methods_by_name[method])
    for name, text in {field: value, **others}.items():
        setattr(request, name, int(text) if name == "rollout_id" else text)
    return request


def test_another_schools_id_answers_like_an_unknown_one(city: City) -> None:
    methods = _id_methods()
    names = {m for m, _ in methods}
    assert {"GetDevice", "GetServer", "GetRollout", "RevokeEnrollToken"} <= names
    assert {"DecommissionDevice", "TrustServerKey", "PingDevice", "AbortRollout"} <= names
    unknown = {
        "device_id": "dev-nobody",
        "token_id": "nobody12",
        "rollout_id": "987654",
        "server_id": "srv-nobody",
    }
    kinds = {f: f.removesuffix("_id") for f in _ID_FIELDS}
    for method, field in methods:
        theirs = city.theirs[kinds[field]]
        before = len(audit_rows(city.controller.database))
        foreign = city.call(method, _request(method, field, theirs))
        absent = city.call(method, _request(method, field, unknown[field]))
        assert foreign.shape(theirs) == absent.shape(unknown[field]), (method, foreign, absent)
        rows = audit_rows(city.controller.database)[before:]
        mine = [r for r in rows if r[0] == "it-a"]
        assert [r[4] for r in mine] == ["denied", "denied"], (method, rows)
        if "only central-ops may" in foreign.details:
            # Refused for the role before any id is looked at: the same for both.
            assert foreign.code == DENIED
            continue
        assert foreign.code == NOT_FOUND, (method, foreign)
        assert "your schools" in foreign.details, (method, foreign)
        # Both attempts are audited, the same way (the other school is kept for
        # central ops, and not shown to the school's own user below).
        assert mine[0][3] == THEIRS and mine[1][3] == "", (method, mine)
        assert mine[0][5].replace(theirs, "ID") == mine[1][5].replace(unknown[field], "ID")
        # Central ops get a plain NOT_FOUND for an id that does not exist.
        ops = city.call(method, _request(method, field, unknown[field]), city.ops)
        assert ops.code == NOT_FOUND and "your schools" not in ops.details, (method, ops)
    # An id inside what the user may see (a host of their own rollout): another
    # school's device answers like one that does not exist.
    for method in {m for m, _ in methods}:
        outer, *inner = _id_fields(method)
        for field in inner:
            mine_id = {outer: city.ours[kinds[outer]]}
            foreign = city.call(
                method, _request(method, field, city.theirs[kinds[field]], **mine_id)
            )
            absent = city.call(method, _request(method, field, unknown[field], **mine_id))
            # (Calls that share the request but ignore the field answer alike too.)
            assert foreign.code == absent.code != grpc.StatusCode.OK, (method, foreign, absent)
            assert foreign.shape(city.theirs[kinds[field]]) == absent.shape(unknown[field])
    # The user's own view of the audit does not give the other school away either.
    audit = city.call("ListAudit", admin_pb2.ListAuditRequest(actor="it-a", limit=1000))
    assert audit.response is not None
    assert THEIRS not in text_format.MessageToString(audit.response)


def test_an_import_does_not_name_another_schools_access_point(city: City) -> None:
    def ap(ap_id: str, bssid: str) -> admin_pb2.InventoryItem:
        return admin_pb2.InventoryItem(
            line=7,
            access_point=admin_pb2.InventoryAccessPoint(
                ap_id=ap_id, school_id=OURS, room_id="r1", bssids=[bssid], address="198.18.9.3"
            ),
        )

    for item in (
        # A BSSID the other school's access point has.
        ap("ap-a-9", "02:00:00:00:02:01"),
        # The other school's access point id, "moved" into ours.
        ap("ap-zeta-1", "02:00:00:00:01:09"),
    ):
        request = admin_pb2.ImportInventoryRequest(source="mine.csv", items=[item], dry_run=True)
        answer = city.call("ImportInventory", request)
        assert answer.code == grpc.StatusCode.OK, answer
        assert answer.response is not None
        text = text_format.MessageToString(answer.response)
        assert "line: 7" in text, text
        assert THEIRS not in text, text
        assert "stored with access point ap-zeta" not in text, text
