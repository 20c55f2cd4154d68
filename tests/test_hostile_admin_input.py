"""Numbers and times out of range in every admin request: a clear refusal, never UNKNOWN.

Every numeric and time field of every AdminService request (found from the
descriptors, nested and repeated fields included) is sent values at and beyond
the edges of its type. The answer is always a status that says what was wrong (a
uint64 beyond int64 and a time outside the years 1 to 9999 name their field), the
controller logs no traceback, and a change attempt is audited whatever happens to
it, a bad row in an import included.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from protos.schoolfleet.v1 import admin_pb2
from tests.hostile_admin import (
    OURS,
    THEIRS,
    City,
    admin_methods,
    audit_rows,
    request_of,
    start_city,
)
from tests.hostile_wire import CLEAN

pytestmark = pytest.mark.e2e

INVALID, DENIED = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED
T = FieldDescriptor
_EDGES: dict[int, list[object]] = {
    T.CPPTYPE_UINT64: [2**63 - 1, 2**63, 2**64 - 1],
    T.CPPTYPE_INT64: [-(2**63), 2**63 - 1],
    T.CPPTYPE_UINT32: [2**32 - 1],
    T.CPPTYPE_INT32: [-(2**31), 2**31 - 1],
    T.CPPTYPE_DOUBLE: [float("nan"), float("inf"), -float("inf"), 1e308],
    T.CPPTYPE_FLOAT: [float("nan"), float("inf")],
    T.CPPTYPE_ENUM: [2**31 - 1, -1],
}
_TIMES = [(2**62, 0), (-(2**62), 0), (253_402_300_800, 0), (0, -1), (0, 2**31 - 1)]


def _paths(
    message: Descriptor, prefix: tuple[FieldDescriptor, ...] = ()
) -> Iterator[tuple[FieldDescriptor, ...]]:
    """Every numeric, enum and Timestamp field under ``message``, as a path of fields."""
    for field in message.fields:
        path = (*prefix, field)
        if field.message_type is not None:
            if field.message_type.full_name == "google.protobuf.Timestamp":
                yield path
            elif len(prefix) < 4 and not field.message_type.GetOptions().map_entry:
                yield from _paths(field.message_type, path)
        elif field.cpp_type in _EDGES:
            yield path


def _set(request: Message, path: tuple[FieldDescriptor, ...], value: object) -> None:
    target = request
    for field in path[:-1]:
        if field.is_repeated:
            target = getattr(target, field.name).add()
        else:
            target = getattr(target, field.name)
    last = path[-1]
    if last.message_type is not None:
        assert isinstance(value, tuple)
        stamp = getattr(target, last.name)
        stamp = stamp.add() if last.is_repeated else stamp
        stamp.seconds, stamp.nanos = value
    elif last.is_repeated:
        getattr(target, last.name).append(value)
    else:
        setattr(target, last.name, value)


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Iterator[City]:
    with start_city(tmp_path_factory.mktemp("admin-input")) as city:
        yield city


def _beyond(field: FieldDescriptor, value: object) -> bool:
    """A value the controller must refuse by the field's name: any time of _TIMES, and
    a uint64 beyond int64."""
    if field.message_type is not None:
        return True
    return field.cpp_type == T.CPPTYPE_UINT64 and isinstance(value, int) and value >= 2**63


def _in_rows(path: tuple[FieldDescriptor, ...]) -> bool:
    """A field inside an import's rows: refused by the row's line, not as the request."""
    return any(
        f.is_repeated and "line" in f.message_type.fields_by_name
        for f in path[:-1]
        if f.message_type is not None
    )


def test_every_numeric_and_time_field_is_range_checked(city: City) -> None:
    log_from = len(city.controller.log_text())
    tried = 0
    for method in admin_methods():
        for path in _paths(method.input_type):
            name = ".".join(f.name for f in path)
            last = path[-1]
            edges = _TIMES if last.message_type is not None else _EDGES[last.cpp_type]
            for value in edges:
                request = request_of(method)
                _set(request, path, value)
                for token in (city.ops, city.it):
                    answer = city.call(method.name, request, token)
                    tried += 1
                    where = f"{method.name} {name}={value!r}: {answer.code} {answer.details}"
                    assert answer.code in CLEAN, where
                    assert "Traceback" not in answer.details and "Error" not in answer.details
                    if _beyond(last, value) and not _in_rows(path) and answer.code != DENIED:
                        assert answer.code == INVALID, where
                        assert last.name in answer.details, where
    assert tried > 100
    log = city.controller.log_text()[log_from:]
    assert "Traceback" not in log, log[-3000:]


def test_rollout_ids_beyond_int64_are_refused_by_name_and_audited(city: City) -> None:
    before = len(audit_rows(city.controller.database))
    for name in ("GetRollout", "AbortRollout", "RetryRollout"):
        answer = city.call(name, admin_pb2.GetRolloutRequest(rollout_id=2**63), city.ops)
        assert answer.shape() == (
            INVALID,
            "GetRolloutRequest.rollout_id 9223372036854775808 is out of range (at most "
            "9223372036854775807)",
        ), answer
    rows = audit_rows(city.controller.database)[before:]
    # The two changes are audited as failed; the read is not a change.
    assert [(r[1], r[4]) for r in rows] == [
        ("rollouts.abort", "failed"),
        ("rollouts.retry", "failed"),
    ]


def test_extra_vars_nested_30000_deep_are_refused_and_audited(city: City) -> None:
    before = len(audit_rows(city.controller.database))
    deep = '{"sf_ntp_servers": ' + "[" * 30_000 + "]" * 30_000 + "}"
    request = admin_pb2.StartRolloutRequest(
        playbook="timesync.yml", selector=f"school={OURS}", extra_vars_json=deep
    )
    answer = city.call("StartRollout", request)
    assert answer.code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.OK), answer
    assert "Recursion" not in answer.details and "Traceback" not in answer.details, answer
    rows = audit_rows(city.controller.database)[before:]
    assert [(r[0], r[1]) for r in rows] == [("it-a", "rollouts.start")], rows
    assert rows[0][4] in ("failed", "denied"), rows


def test_a_bad_row_does_not_keep_a_denied_import_out_of_the_audit(city: City) -> None:
    def lesson(line: int, school: str, starts: int) -> admin_pb2.ScheduledLesson:
        row = admin_pb2.ScheduledLesson(
            line=line,
            school_id=school,
            room_id="r1",
            class_name="7b",
            subject="maths",
            content_url="https://lessons.example/x",
        )
        row.starts_at.seconds, row.ends_at.seconds = starts, starts + 2700
        return row

    before = len(audit_rows(city.controller.database))
    request = admin_pb2.ImportLessonsRequest(
        source="mixed.csv",
        lessons=[lesson(2, THEIRS, 1_900_000_000), lesson(3, OURS, 2**62)],
    )
    answer = city.call("ImportLessons", request)
    assert answer.code == grpc.StatusCode.OK, answer
    assert isinstance(answer.response, admin_pb2.ImportLessonsResponse)
    errors = {e.line: e.message for e in answer.response.errors}
    assert set(errors) == {2, 3}, errors
    assert "start" in errors[3] and "not a valid time" in errors[3], errors
    rows = audit_rows(city.controller.database)[before:]
    assert (THEIRS, "denied") in {(r[3], r[4]) for r in rows if r[1] == "lessons.import"}, rows
