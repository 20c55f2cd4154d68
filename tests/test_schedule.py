"""The schedule import: row rules, context rules, and reading CSV and JSON files."""

from __future__ import annotations

import csv
import io
import json
import string
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.content_hosts import host_allowed
from inventory.lessons import Lesson
from inventory.row_fields import RowError
from inventory.schedule import (
    COLUMNS,
    ScheduleError,
    ScheduleRow,
    check_rows,
)
from inventory.schedule_file import open_schedule, parse_schedule
from inventory.schedule_rows import lesson_by_hand, parse_row

START = "2026-11-24T08:30+03:00"
END = "2026-11-24T09:15+03:00"
T0 = datetime(2026, 11, 24, 5, 30, tzinfo=UTC).timestamp()
ROOMS = frozenset({("s1", "r1"), ("s1", "r2")})


def fields(**changes: object) -> dict[str, object]:
    """A good row as a CSV gives it, with some fields changed (None: left out)."""
    row: dict[str, object] = {
        "school": "s1",
        "room": "r1",
        "start": START,
        "end": END,
        "class": "7B",
        "subject": "mathematics",
        "teacher": "Ivanova",
        "content_url": "https://lib.example.org/s/42",
        "remote": "no",
    }
    row.update(changes)
    return {k: v for k, v in row.items() if v is not None}


def error_of(**changes: object) -> str:
    result = parse_row(7, fields(**changes))
    assert isinstance(result, RowError), result
    assert result.line == 7
    return result.message


def lesson_of(**changes: object) -> Lesson:
    result = parse_row(7, fields(**changes))
    assert isinstance(result, ScheduleRow), result
    return result.lesson


def lesson(room: str = "r1", start: float = T0, minutes: float = 45, **changes: Any) -> Lesson:
    base = Lesson(
        "s1", room, start, start + minutes * 60, "7B", "mathematics", "",
        "https://lib.example.org/", False,
    )  # fmt: skip
    return replace(base, **changes)


def check(
    rows: list[ScheduleRow | RowError],
    stored: list[Lesson] | None = None,
    hosts: frozenset[str] = frozenset(),
) -> tuple[list[int], dict[int, str]]:
    good, bad = check_rows(rows, ROOMS, hosts, stored or [])
    return [r.line for r in good], {e.line: e.message for e in bad}


# parse_row


def test_a_good_row_becomes_a_lesson() -> None:
    assert lesson_of() == Lesson(
        "s1", "r1", T0, T0 + 45 * 60, "7B", "mathematics", "Ivanova",
        "https://lib.example.org/s/42", False,
    )  # fmt: skip


@pytest.mark.parametrize(
    "start",
    [
        "2026-11-24T08:30:00+03:00",
        "2026-11-24 08:30+03:00",
        "2026-11-24T05:30Z",
        "2026-11-24t05:30:00.000z",
        "2026-11-24T08:30+0300",
        "2026-11-24T08:30+03",
        "2026-11-24T01:30-04:00",
        "  2026-11-24T08:30+03:00 ",
    ],
)
def test_times_with_an_offset_are_accepted(start: str) -> None:
    assert lesson_of(start=start).starts_at == T0


def test_a_time_without_a_zone_is_refused() -> None:
    assert error_of(start="2026-11-24T08:30") == (
        "start '2026-11-24T08:30' has no time zone "
        "(write it as 2026-11-24T08:30+03:00, with your offset, or Z for UTC)"
    )


@pytest.mark.parametrize(
    ("end", "message"),
    [
        ("tomorrow", "end 'tomorrow' is not an ISO 8601 time (write it as 2026-11-24T08:30+03:00)"),
        ("2026-11-24+03:00", "end '2026-11-24+03:00' is not an ISO 8601 time"),
        ("2026-02-30T08:30Z", "end '2026-02-30T08:30Z' is not a valid time (day is out of range"),
        ("2026-11-24T24:00Z", "end '2026-11-24T24:00Z' is not a valid time (hour must be in"),
        ("2026-11-24T08:30+24:00", "end '2026-11-24T08:30+24:00' is not a valid time (offset"),
        ("9999-12-31T23:00-05:00", "end '9999-12-31T23:00-05:00' is not a valid time"),
    ],
)
def test_bad_times_are_refused(end: str, message: str) -> None:
    assert error_of(end=end).startswith(message)


def test_an_end_before_its_start_is_refused_naming_both() -> None:
    assert error_of(end="2026-11-24T08:00+03:00") == (
        "end '2026-11-24T08:00+03:00' is not after start '2026-11-24T08:30+03:00'"
    )
    # The same instant written in another zone is not after it either.
    assert error_of(end="2026-11-24T05:30Z") == (
        "end '2026-11-24T05:30Z' is not after start '2026-11-24T08:30+03:00'"
    )


def test_a_lesson_is_at_most_twelve_hours() -> None:
    assert lesson_of(end="2026-11-24T20:30+03:00").ends_at == T0 + 12 * 3600
    assert error_of(end="2026-11-24T20:31+03:00") == (
        "end '2026-11-24T20:31+03:00' is 12h01m after start '2026-11-24T08:30+03:00' "
        "(a lesson is at most 12 hours)"
    )


def test_ids_must_be_valid() -> None:
    assert error_of(room="r 1") == (
        "room 'r 1' is not a valid id "
        "(1-64 letters, digits and ._:-, starting with a letter or digit)"
    )
    assert error_of(school="-s").startswith("school '-s' is not a valid id")


def test_missing_null_and_empty_fields_are_named() -> None:
    assert error_of(school=None) == "school is missing"
    assert error_of(room="  ") == "room is empty"
    assert error_of(subject=None, content_url="") == "subject is missing; content_url is empty"
    assert parse_row(1, {}) == RowError(
        1,
        "school is missing; room is missing; start is missing; end is missing; "
        "class is missing; subject is missing; content_url is missing",
    )


def test_json_values_of_the_wrong_type_are_named() -> None:
    assert error_of(room=101) == "room is a number (101), not a string"
    assert error_of(school=json.loads("null")) == "school is missing"
    assert error_of(**{"class": ["7B"]}) == 'class is a list (["7B"]), not a string'
    assert error_of(teacher={"n": 1}) == 'teacher is an object ({"n": 1}), not a string'
    assert error_of(start=True) == "start is a boolean (true), not a string"


def test_teacher_is_optional_class_and_subject_are_not() -> None:
    assert lesson_of(teacher=None).teacher == ""
    assert lesson_of(teacher=" ").teacher == ""
    assert error_of(**{"class": ""}) == "class is empty"


def test_text_is_one_line_of_at_most_200_characters() -> None:
    assert lesson_of(subject=" Алгебра ").subject == "Алгебра"
    assert lesson_of(teacher="x" * 200).teacher == "x" * 200
    assert error_of(teacher="x" * 201) == "teacher is 201 characters long, at most 200"
    assert error_of(subject="a\nb") == "subject 'a\\nb' contains a control character or line break"
    assert error_of(subject="a\u2028b").startswith("subject 'a\\u2028b' contains")
    assert error_of(subject="a\x00b").startswith("subject 'a\\x00b' contains")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://lib.example.org/a", "has scheme ftp (only https, or http for allowed hosts)"),
        ("javascript:alert(1)", "has scheme javascript (only https, or http for allowed hosts)"),
        ("lib.example.org/a", "has scheme none (only https, or http for allowed hosts)"),
        ("https:///a", "has no host"),
        ('https://a"b.org/', "has an invalid host 'a\"b.org'"),
        ("https://a%2eb/", "has an invalid host 'a%2eb'"),
        (
            "https://lib.example.org/a b",
            "contains a space or a control character (percent-encode it)",
        ),
        ("https://a@lib.example.org/", "carries a user name or password"),
        ("https://lib.example.org:99999/", "is not a valid URL (Port out of range 0-65535)"),
        ("https://[::1/", "is not a valid URL (Invalid IPv6 URL)"),
    ],
)
def test_bad_urls_are_refused(url: str, problem: str) -> None:
    assert error_of(content_url=url) == f"content_url {url!r} {problem}"


def test_long_urls_are_refused_and_cut_in_the_message() -> None:
    url = "https://lib.example.org/" + "a" * 2100
    message = error_of(content_url=url)
    assert message.startswith("content_url 'https://lib.example.org/aaa")
    assert message.endswith("…' is 2124 characters long, at most 2048")
    assert lesson_of(content_url=url[:2048]).content_url == url[:2048]


def test_http_passes_the_row_rules() -> None:
    assert lesson_of(content_url="HTTP://Lib.Example.org/").content_url == "HTTP://Lib.Example.org/"


@pytest.mark.parametrize(
    ("value", "remote"),
    [("true", True), ("FALSE", False), ("Yes", True), ("no", False), ("1", True),
     ("0", False), ("", False), (None, False), (True, True), (False, False)],
)  # fmt: skip
def test_remote_is_a_boolean(value: object, remote: bool) -> None:
    assert lesson_of(remote=value).remote is remote


def test_remote_refuses_anything_else() -> None:
    assert error_of(remote="maybe") == "remote 'maybe' is not true or false (or yes/no, 1/0)"
    assert error_of(remote=1) == "remote is a number (1), not true or false"


def test_unknown_fields_are_refused_and_problems_joined() -> None:
    assert error_of(tacher="x", room="r 1").startswith(
        "unknown field 'tacher' (known: school, room, start, end, class, subject, teacher, "
        "content_url, remote); room 'r 1' is not a valid id"
    )


# check_rows


def rows_of(*lessons: Lesson) -> list[ScheduleRow | RowError]:
    return [ScheduleRow(n, x) for n, x in enumerate(lessons, 2)]


def test_the_room_must_be_in_the_inventory() -> None:
    assert check(rows_of(lesson(room="r9")))[1] == {
        2: "room r9 of school s1 is not in the inventory"
    }
    good, _ = check_rows(rows_of(lesson(room="r9")), lambda s, r: r == "r9", frozenset(), [])
    assert [r.line for r in good] == [2]


def test_http_only_for_hosts_on_the_allow_list() -> None:
    urls = [
        "http://media.school.local/a",
        "http://school.local/a",
        "http://evilschool.local/a",
        "http://school.local.evil.com/a",
        "https://anywhere.example.com/a",
        "http://10.0.0.5/a",
        "http://1.10.0.0.5/a",
    ]
    rows = rows_of(*(lesson(start=T0 + n * 3600, content_url=u) for n, u in enumerate(urls)))
    lines, errors = check(rows, hosts=frozenset({"School.Local.", "10.0.0.5"}))
    assert lines == [2, 3, 6, 7]
    assert errors[4] == (
        "content_url 'http://evilschool.local/a' uses http, allowed only for hosts on the "
        "allow-list (evilschool.local is not on it; use https)"
    )
    assert set(errors) == {4, 5, 8}


def test_host_allowed() -> None:
    assert host_allowed("A.B.example.org", {"example.org"})
    assert not host_allowed("example.org", {"a.example.org"})
    assert not host_allowed("x.10.0.0.5", {"10.0.0.5"})
    assert not host_allowed("anything", {""})


def test_overlapping_rows_refuse_the_later_naming_the_earlier_line() -> None:
    rows = rows_of(
        lesson(),
        lesson(start=T0 + 45 * 60),  # starts as the first ends: fine
        lesson(start=T0 + 30 * 60),
        lesson(room="r2", start=T0 + 30 * 60),
    )
    assert check(rows) == ([2, 3, 5], {4: "overlaps line 2 in room r1 of school s1"})


def test_the_same_lesson_twice_is_refused_naming_the_first_line() -> None:
    rows = rows_of(lesson(), lesson(start=T0 + 20, minutes=1, subject="physics"))
    assert check(rows) == (
        [2],
        {3: "same lesson as line 2 (room r1 of school s1, starting the same minute)"},
    )


def test_a_stored_lesson_that_overlaps_is_named_by_its_times() -> None:
    stored = [lesson(start=T0 - 30 * 60, subject="physics")]
    assert check(rows_of(lesson()), stored) == (
        [],
        {
            2: "overlaps the stored lesson '7B physics' from 2026-11-24T05:00Z to "
            "2026-11-24T05:45Z in room r1 of school s1"
        },
    )


def test_a_stored_lesson_with_the_same_id_is_updated_not_an_overlap() -> None:
    stored = [lesson(minutes=90, subject="physics"), lesson(start=T0 + 90 * 60)]
    assert check(rows_of(lesson(minutes=90)), stored) == ([2], {})
    # Lengthened into the next stored lesson, it overlaps that one.
    assert list(check(rows_of(lesson(minutes=100)), stored)[1]) == [2]


def test_manual_lessons_are_never_the_same_lesson() -> None:
    stored = [lesson(manual=True)]
    assert list(check(rows_of(lesson()), stored)[1]) == [2]


def test_row_errors_pass_through_in_order() -> None:
    rows: list[ScheduleRow | RowError] = [
        RowError(2, "bad"),
        ScheduleRow(3, lesson()),
        RowError(4, "worse"),
    ]
    good, bad = check_rows(rows, ROOMS, frozenset(), [])
    assert [r.line for r in good] == [3]
    assert bad == [RowError(2, "bad"), RowError(4, "worse")]


def test_every_problem_of_a_row_is_in_its_message() -> None:
    rows = rows_of(lesson(), lesson(room="r1", content_url="http://x.org/"))
    assert check(rows, [lesson(room="r1", start=T0 - 3600, minutes=61)])[1][3] == (
        "content_url 'http://x.org/' uses http, allowed only for hosts on the allow-list "
        "(x.org is not on it; use https); same lesson as line 2 (room r1 of school s1, "
        "starting the same minute); overlaps the stored lesson '7B mathematics' from "
        "2026-11-24T04:30Z to 2026-11-24T05:31Z in room r1 of school s1"
    )


# Lessons on a 15-minute grid in two rooms, so overlaps, touches and repeats are common.
grid_lessons = st.builds(
    lambda room, slot, quarters: lesson(room=room, start=T0 + slot * 900, minutes=quarters * 15),
    st.sampled_from(["r1", "r2"]),
    st.integers(0, 24),
    st.integers(1, 8),
)


def overlap(a: Lesson, b: Lesson) -> bool:
    return a.room_id == b.room_id and a.starts_at < b.ends_at and b.starts_at < a.ends_at


def expected_outcome(file: list[Lesson], stored: list[Lesson]) -> dict[int, list[str]]:
    """What check_rows should say of each line, found the slow way."""
    said: dict[int, list[str]] = {}
    for i, x in enumerate(file):
        same = [j + 2 for j, y in enumerate(file[:i]) if y.lesson_id == x.lesson_id]
        over = [j + 2 for j, y in enumerate(file[:i]) if overlap(x, y)]
        said[i + 2] = (
            [f"same lesson as line {same[0]} "] if same
            else [f"overlaps line {over[0]} "] if over else []
        )  # fmt: skip
    # Stored lessons a passing row updates are replaced; repeat until nothing changes.
    passing = [x for i, x in enumerate(file) if not said[i + 2]]
    while True:
        replaced = {x.lesson_id for x in passing}
        kept = [s for s in stored if s.lesson_id not in replaced]
        clash = {
            i + 2: any(overlap(x, s) and s.lesson_id != x.lesson_id for s in kept)
            for i, x in enumerate(file)
        }
        now = [x for i, x in enumerate(file) if not said[i + 2] and not clash[i + 2]]
        if now == passing:
            break
        passing = now
    return {line: [*said[line], *(["overlaps the stored lesson"] * clash[line])] for line in said}


def stored_after(good: list[ScheduleRow], stored: list[Lesson]) -> list[Lesson]:
    updated = {r.lesson.lesson_id for r in good}
    return [s for s in stored if s.lesson_id not in updated] + [r.lesson for r in good]


def non_overlapping(lessons: list[Lesson]) -> list[Lesson]:
    kept: list[Lesson] = []
    for x in lessons:
        if not any(overlap(x, y) or x.lesson_id == y.lesson_id for y in kept):
            kept.append(x)
    return kept


@st.composite
def schedules(draw: st.DrawFn) -> tuple[list[Lesson], list[Lesson]]:
    """Stored lessons that do not overlap, and a file that updates some of them."""
    stored = draw(st.lists(grid_lessons, max_size=10).map(non_overlapping))
    updates = st.builds(
        lambda s, quarters: replace(s, ends_at=s.starts_at + quarters * 900),
        st.sampled_from(stored),
        st.integers(1, 8),
    )
    file = draw(st.lists(st.one_of(grid_lessons, updates) if stored else grid_lessons, max_size=20))
    return file, stored


@given(schedules())
def test_overlap_rules_agree_with_brute_force(schedule: tuple[list[Lesson], list[Lesson]]) -> None:
    file, stored = schedule
    lines, errors = check(rows_of(*file), stored)
    for line, expected in expected_outcome(file, stored).items():
        assert (line in lines) == (not expected)
        message = errors.get(line, "")
        assert all(e in message for e in expected), (expected, message)
        assert message.count(";") == max(len(expected) - 1, 0)


@given(schedules())
def test_importing_the_same_file_again_changes_nothing(
    schedule: tuple[list[Lesson], list[Lesson]],
) -> None:
    file, stored = schedule
    rows = rows_of(*file)
    good, _ = check_rows(rows, ROOMS, frozenset(), stored)
    after = stored_after(good, stored)
    assert non_overlapping(after) == after  # nothing stored overlaps, and nothing is lost
    assert check_rows(rows, ROOMS, frozenset(), after)[0] == good
    assert check_rows(good, ROOMS, frozenset(), after) == (good, [])


def test_a_file_may_shorten_a_lesson_and_use_the_freed_time() -> None:
    stored = [lesson(minutes=90)]
    rows = rows_of(lesson(start=T0 + 45 * 60), lesson(minutes=45))
    assert check(rows, stored) == ([2, 3], {})


def test_a_refused_update_keeps_the_stored_lesson_in_the_way() -> None:
    stored = [lesson(minutes=60), lesson(start=T0 + 3600, minutes=60)]
    rows = rows_of(
        lesson(minutes=90),  # fine if the second's update passed, but it does not
        lesson(start=T0 + 3600, minutes=60, content_url="http://x.org/"),  # refused: http
        lesson(start=T0 + 7200, minutes=60),
    )
    lines, errors = check(rows, stored)
    assert lines == [4]
    assert errors[2].startswith(
        "overlaps the stored lesson '7B mathematics' from 2026-11-24T06:30Z"
    )


def test_stored_lessons_may_come_from_a_generator() -> None:
    stored = [lesson(minutes=90), lesson(start=T0 + 90 * 60)]
    good, bad = check_rows(rows_of(lesson(start=T0 + 100 * 60)), ROOMS, set(), iter(stored))
    assert (good, [e.line for e in bad]) == ([], [2])


# Reading files


def read(text: str, fmt: str) -> list[ScheduleRow | RowError]:
    assert fmt in ("csv", "json")
    return list(parse_schedule("s." + fmt, text.encode(), "csv" if fmt == "csv" else "json").rows())


HEADER = ",".join(COLUMNS)
GOOD = f"s1,r1,{START},{END},7B,mathematics,Ivanova,https://lib.example.org/s/42,no"


def test_open_schedule_reads_csv_and_json_files(tmp_path: Path) -> None:
    (tmp_path / "a.CSV").write_text(f"{HEADER}\n{GOOD}\n", encoding="utf-8")
    (tmp_path / "b.json").write_text(json.dumps([fields()]), encoding="utf-8")
    for name in ("a.CSV", "b.json"):
        source = open_schedule(tmp_path / name)
        assert source.name == str(tmp_path / name)
        assert [r.lesson for r in source.rows() if isinstance(r, ScheduleRow)] == [lesson_of()]


def test_whole_file_problems_are_schedule_errors(tmp_path: Path) -> None:
    (tmp_path / "s.txt").write_text(HEADER)
    with pytest.raises(
        ScheduleError, match=r"s\.txt: a schedule is a \.csv or \.json file, not '\.txt'$"
    ):
        open_schedule(tmp_path / "s.txt")
    with pytest.raises(ScheduleError, match=r"cannot read .*nope\.csv: No such file or directory"):
        open_schedule(tmp_path / "nope.csv")
    (tmp_path / "w.csv").write_bytes(f"{HEADER}\n{GOOD}\n".encode() + "Алгебра".encode("cp1251"))
    with pytest.raises(
        ScheduleError, match=r"w\.csv:3: not UTF-8 text \(byte 0xc0\); save it as UTF-8$"
    ):
        open_schedule(tmp_path / "w.csv")
    with pytest.raises(ScheduleError, match=r"s\.csv is empty$"):
        read(" \n\n", "csv")


def test_a_bom_and_a_spreadsheet_header_are_accepted() -> None:
    header = "School,ROOM,start,End,Class,Subject,Teacher,Content URL"
    assert len(read(f"\ufeff{header},remote,,\n{GOOD},,\n", "csv")) == 1
    with pytest.raises(ScheduleError, match="names columns more than once: content_url"):
        read(f"{header},content-url\n", "csv")


def test_a_bad_csv_header_lists_what_is_wrong() -> None:
    with pytest.raises(ScheduleError) as e:
        read("\n\nschool,room,start,end,Class,tacher,content_url\n", "csv")
    assert str(e.value) == (
        "s.csv:3: the header lacks required columns subject; has unknown columns 'tacher' "
        f"(the first row names the columns: {HEADER})"
    )
    with pytest.raises(
        ScheduleError, match=r"s\.csv:1: the header has columns without a name: 2 \("
    ):
        read(HEADER.replace(",", ",,", 1) + "\n", "csv")
    with pytest.raises(ScheduleError, match=r"\(values are separated by ';', but .* by ','\)$"):
        read(HEADER.replace(",", ";") + "\n", "csv")


def test_csv_rows_report_the_line_they_start_on() -> None:
    text = (
        f"{HEADER}\r\n\r\n"
        f'{GOOD}\r\ns1,r1,2026-11-25T08:30+03:00,2026-11-25T09:15+03:00,"7B",'
        f'"two\r\nlines","Petrov, P.",https://lib.example.org/,yes\r\n'
        ",,,,\r\n"
        f"{GOOD.replace('7B', '8A, 9A')}\r\n"
        f"s1,r1,{START},{END},7B,physics\n"
        f's1,r1,2026-11-26T08:30+03:00,2026-11-26T09:15+03:00,7B,x,"P, P",https://a.org,yes,,\n'
    )
    rows = read(text, "csv")
    assert [(r.line, type(r).__name__) for r in rows] == [
        (3, "ScheduleRow"), (4, "RowError"), (7, "RowError"), (8, "RowError"), (9, "ScheduleRow"),
    ]  # fmt: skip
    assert rows[1] == RowError(
        4, "subject 'two\\r\\nlines' contains a control character or line break"
    )
    message = "row has {} values but the header has 9 columns (quote values that contain commas)"
    assert rows[2] == RowError(7, message.format(10))
    assert rows[3] == RowError(8, message.format(6))


def test_json_rows_report_the_line_of_their_opening_brace() -> None:
    a, b = json.dumps(fields()), json.dumps(fields(start="2026-11-25T08:30+03:00"))
    pretty = json.dumps({"lessons": [fields(), 7, fields(room=101)]}, indent=2)
    rows = read(pretty, "json")
    assert [r.line for r in rows] == [3, 14, 15]
    assert rows[1] == RowError(14, "expected a lesson object, not 7")
    assert rows[2] == RowError(15, "room is a number (101), not a string")
    assert [r.line for r in read(f"[{a}, {b}]", "json")] == [1, 1]
    assert [r.line for r in read(f"\r\n[\r\n\r\n{a},\r\r{b}\n]", "json")] == [4, 6]
    dup = '[\n{"room": "r1", "room": "r2"}]'
    assert read(dup, "json") == [RowError(2, "field room given more than once in one lesson")]


EXPECTED = 'a list of lessons, or {"lessons": [...]}'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[{}", "s.json:1:4: not valid JSON (Expecting ',' delimiter)"),
        ('[\n  {"a": 1,}\n]', "s.json:2:11: not valid JSON (Expecting property name enclosed"),
        ("[] []", "s.json:1:4: not valid JSON (Extra data)"),
        ('"x"', f"s.json: expected {EXPECTED}, not \"x\""),
        ('{"lesson": []}', f"s.json: expected {EXPECTED}; the object's keys are 'lesson'"),
        ('{"lessons": {}}', f"s.json: expected {EXPECTED}; the object's keys are 'lessons'"),
        ('{"lessons": [], "lessons": []}', f"s.json: expected {EXPECTED}; the object's keys are"),
        ("[" * 100_000, "s.json: not a JSON schedule (maximum recursion depth exceeded"),
        ("[" + "1" * 5000 + "]", "s.json: not a JSON schedule (Exceeds the limit (4300 digits)"),
    ],
)  # fmt: skip
def test_json_that_is_not_a_schedule_is_refused(text: str, message: str) -> None:
    with pytest.raises(ScheduleError) as e:
        read(text, "json")
    assert str(e.value).startswith(message)


# Round trips: any valid lesson written to CSV or JSON reads back the same.

ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}", fullmatch=True)
text = (
    st.text(st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp")), max_size=200)
    .map(str.strip)
)  # fmt: skip
urls = st.builds(
    lambda scheme, host, path: f"{scheme}://{host}/{path}",
    st.sampled_from(["https", "http", "HTTPS"]),
    st.sampled_from(["lib.example.org", "10.0.0.5:8080", "xn--e1afmkfd.xn--p1ai", "[::1]"]),
    st.text(string.ascii_letters + string.digits + "/-_.~%?=&,;'\"", max_size=100),
)
lessons = st.builds(
    lambda school, room, start, length, cls, subject, teacher, url, remote: Lesson(
        school, room, float(start), float(start + length), cls, subject, teacher, url, remote
    ),
    ids,
    ids,
    st.integers(946_684_800, 4_102_444_800),
    st.integers(1, 12 * 3600),
    text.filter(bool),
    text.filter(bool),
    text,
    urls,
    st.booleans(),
)


def written(at: float, offset_minutes: int, sep: str) -> str:
    moment = datetime.fromtimestamp(at, timezone(timedelta(minutes=offset_minutes)))
    return moment.isoformat(sep=sep).replace("+00:00", "Z")


def as_fields(x: Lesson, offset: int, sep: str, remote: str) -> dict[str, str]:
    return {
        "school": x.school_id, "room": x.room_id,
        "start": written(x.starts_at, offset, sep), "end": written(x.ends_at, offset, sep),
        "class": x.class_name, "subject": x.subject, "teacher": x.teacher,
        "content_url": x.content_url, "remote": remote,
    }  # fmt: skip


offsets = st.integers(-12 * 60, 14 * 60)
seps = st.sampled_from(["T", " "])


@settings(max_examples=40)
@given(st.lists(lessons, min_size=1, max_size=5), offsets, seps, st.data())
def test_csv_round_trip(batch: list[Lesson], offset: int, sep: str, data: st.DataObject) -> None:
    out = io.StringIO()
    columns = data.draw(st.permutations(COLUMNS))
    writer = csv.DictWriter(out, columns)
    writer.writeheader()
    for x in batch:
        spelling = data.draw(st.sampled_from(["true", "Yes", "1"] if x.remote else ["no", "0", ""]))
        writer.writerow(as_fields(x, offset, sep, spelling))
    rows = read(out.getvalue(), "csv")
    assert [r.lesson for r in rows if isinstance(r, ScheduleRow)] == batch
    assert [r.line for r in rows] == list(range(2, len(batch) + 2))


@settings(max_examples=40)
@given(st.lists(lessons, min_size=1, max_size=5), offsets, seps, st.sampled_from([None, 0, 2]))
def test_json_round_trip(batch: list[Lesson], offset: int, sep: str, indent: int | None) -> None:
    items: list[Mapping[str, object]] = [
        {**as_fields(x, offset, sep, ""), "remote": x.remote} for x in batch
    ]
    rows = read(json.dumps(items, indent=indent, ensure_ascii=indent is None), "json")
    assert [r.lesson for r in rows if isinstance(r, ScheduleRow)] == batch


@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["", " ", "\t"])), max_size=8))
def test_json_lines_wherever_the_objects_are(layout: list[tuple[int, str]]) -> None:
    parts, line, expected = ["["], 1, []
    for n, (breaks, indent) in enumerate(layout):
        if n:
            parts.append(",")
        parts.append("\n" * breaks + indent)
        line += breaks
        expected.append(line)
        parts.append(json.dumps(fields(), indent=1))
        line += len(COLUMNS) + 1
    rows = read("".join([*parts, "]"]), "json")
    assert [r.line for r in rows] == expected
    assert all(isinstance(r, ScheduleRow) for r in rows)


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), max_size=8))
def test_csv_lines_wherever_the_records_are(layout: list[tuple[int, int]]) -> None:
    lines, line, expected = [HEADER], 1, []
    for blank, breaks in layout:
        lines += [""] * blank
        line += blank + 1
        expected.append(line)
        teacher = '"' + "x\n" * breaks + 'y"'
        lines.append(GOOD.replace("Ivanova", teacher))
        line += breaks
    rows = read("\n".join(lines), "csv")
    assert [r.line for r in rows] == expected
    assert [isinstance(r, RowError) for r in rows] == [b > 0 for _, b in layout]


def test_a_lesson_by_hand_keeps_the_controller_s_times_and_the_rows_rules() -> None:
    lesson = lesson_by_hand("s1", "r1", 1_800_000_000.25, 1_800_002_700.25, "maths", "https://x/l")
    assert not isinstance(lesson, RowError)
    assert (lesson.starts_at, lesson.ends_at, lesson.manual) == (
        1_800_000_000.25,
        1_800_002_700.25,
        True,
    )
    assert (lesson.subject, lesson.content_url, lesson.class_name) == ("maths", "https://x/l", "-")
    # What a person typed is held to a schedule row's rules, one line naming the field.
    for school, subject, url, word in (
        ("s 1/../x", "maths", "https://x/l", "school"),
        ("s1", "maths\n$(reboot)", "https://x/l", "subject"),
        ("s1", "maths", "javascript:alert(1)", "content_url"),
        ("s1", "maths", "file:///etc/shadow", "content_url"),
    ):
        refused = lesson_by_hand(school, "r1", 0.0, 60.0, subject, url)
        assert isinstance(refused, RowError), (school, subject, url)
        assert word in refused.message and "\n" not in refused.message, refused.message
