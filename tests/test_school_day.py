"""The school day's rule for rollouts: lessons and maintenance windows."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inventory.school_day import (
    Candidate,
    WindowError,
    inside,
    next_opening,
    parse_window,
    pick_wave,
)

ZONE = ZoneInfo("Europe/Moscow")


def at(text: str) -> float:
    """A local time in the schools' zone; 2026-11-30 is a Monday."""
    return datetime.fromisoformat(text).replace(tzinfo=ZONE).timestamp()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "write DAYS HH:MM-HH:MM"),
        ("mon-fri", "write DAYS HH:MM-HH:MM"),
        ("monday 18:00-06:00", "use daily or mon..sun"),
        ("mon-fri 25:00-06:00", "a time is not HH:MM"),
        ("mon-fri 18:00-24:30", "a time is not HH:MM"),
        ("mon-fri 18:60-20:00", "a time is not HH:MM"),
    ],
)
def test_a_bad_window_is_refused_naming_it(text: str, message: str) -> None:
    with pytest.raises(WindowError, match=message) as caught:
        parse_window(text)
    assert repr(text) in str(caught.value)


def test_days_ranges_and_lists() -> None:
    assert parse_window("mon-fri 18:00-06:00").days == frozenset(range(5))
    assert parse_window("sat,sun 00:00-24:00").days == frozenset({5, 6})
    assert parse_window("fri-mon 20:00-22:00").days == frozenset({4, 5, 6, 0})
    assert parse_window("daily 01:00-05:00").days == frozenset(range(7))
    assert parse_window("  mon,wed-thu   9:00 - 10:00 ").text == "mon,wed-thu 9:00 - 10:00"


def test_a_window_past_midnight_covers_the_next_morning() -> None:
    evenings = [parse_window("mon-fri 18:00-06:00")]
    # Monday 23:00 to Tuesday 01:00: inside Monday's opening.
    assert inside(evenings, at("2026-11-30T23:00"), at("2026-12-01T01:00"), ZONE)
    # Tuesday 05:30 to 06:00: still Monday's opening, to its very end.
    assert inside(evenings, at("2026-12-01T05:30"), at("2026-12-01T06:00"), ZONE)
    # Past 06:00, or during the school day: outside.
    assert not inside(evenings, at("2026-12-01T05:30"), at("2026-12-01T06:01"), ZONE)
    assert not inside(evenings, at("2026-12-01T10:00"), at("2026-12-01T10:10"), ZONE)
    # Saturday 02:00 is Friday night's opening; Sunday 02:00 is nobody's.
    assert inside(evenings, at("2026-12-05T02:00"), at("2026-12-05T03:00"), ZONE)
    assert not inside(evenings, at("2026-12-06T02:00"), at("2026-12-06T03:00"), ZONE)


def test_the_next_opening() -> None:
    evenings = [parse_window("mon-fri 18:00-06:00")]
    assert next_opening(evenings, at("2026-11-30T10:00"), ZONE) == at("2026-11-30T18:00")
    # Friday night after the opening: the next is Monday's.
    assert next_opening(evenings, at("2026-12-04T19:00"), ZONE) == at("2026-12-07T18:00")
    assert next_opening([], at("2026-12-04T19:00"), ZONE) is None


@given(
    st.integers(0, 23),
    st.integers(0, 59),
    st.integers(1, 24 * 60),
    st.integers(0, 7 * 24 * 60),
)
def test_any_window_contains_its_own_opening(h: int, m: int, length: int, offset: int) -> None:
    end = (h * 60 + m + length) % (24 * 60)
    end_text = f"{end // 60:02d}:{end % 60:02d}" if end else "24:00"
    window = parse_window(f"daily {h:02d}:{m:02d}-{end_text}")
    now = at("2026-11-30T00:00") + offset * 60
    opens = next_opening([window], now, ZONE)
    assert opens is not None and now < opens <= now + 86_400 + 3600
    assert inside([window], opens, opens + window.length.total_seconds(), ZONE)


def test_a_wave_takes_only_free_hosts_and_says_why_the_others_wait() -> None:
    now = at("2026-11-30T10:00")
    hosts = [
        Candidate("p-1", "s1", "r-lesson"),
        Candidate("p-2", "s1", "r-free"),
        Candidate("p-3", "s2", "r-any"),
        Candidate("lap-1", "s1", ""),
    ]
    busy = {("s1", "r-lesson"): at("2026-11-30T10:45")}
    windows = {"s2": [parse_window("mon-fri 18:00-06:00")]}
    pick = pick_wave(hosts, 10, busy, windows, now, 600, ZONE)
    assert pick.chosen == ("p-2", "lap-1")
    assert "1 in rooms with lessons (first free Mon 10:45)" in pick.waiting
    assert "1 outside their school's maintenance window (next opens Mon 18:00)" in pick.waiting
    assert pick.retry_at == at("2026-11-30T10:45")
    # The wave's size is a cap, and nothing waits when every host is free.
    assert pick_wave(hosts[1:2] * 3, 2, {}, {}, now, 600, ZONE).chosen == ("p-2", "p-2")
    assert pick_wave(hosts[1:2], 5, {}, {}, now, 600, ZONE).waiting == ""
