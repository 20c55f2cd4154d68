"""What a day spans in the schools' time zone, and the days people may name."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from controller.lessons.days import day_bounds, named_day_bounds

BERLIN = ZoneInfo("Europe/Berlin")
# 2026-12-07 23:30 in Berlin, 22:30 UTC.
NOW = datetime(2026, 12, 7, 23, 30, tzinfo=BERLIN).timestamp()


def _local(at: float) -> str:
    return datetime.fromtimestamp(at, BERLIN).isoformat()


def test_days_named_in_words_are_the_zones_days() -> None:
    assert day_bounds(NOW, BERLIN) == named_day_bounds("today", NOW, BERLIN)
    since, until = named_day_bounds("tomorrow", NOW, BERLIN)
    assert (_local(since), _local(until)) == (
        "2026-12-08T00:00:00+01:00",
        "2026-12-09T00:00:00+01:00",
    )
    since, _ = named_day_bounds("yesterday", NOW, BERLIN)
    assert _local(since) == "2026-12-06T00:00:00+01:00"


def test_a_day_the_clocks_change_is_23_or_25_hours() -> None:
    since, until = named_day_bounds("2026-03-29", NOW, BERLIN)
    assert (_local(since), until - since) == ("2026-03-29T00:00:00+01:00", 23 * 3600)
    since, until = named_day_bounds("2026-10-25", NOW, BERLIN)
    assert (_local(since), until - since) == ("2026-10-25T00:00:00+02:00", 25 * 3600)


@pytest.mark.parametrize(
    "name", ["2026-02-30", "20260901", "2026-W36-1", "2026-9-1", "Tomorrow", "", "x" * 1000]
)
def test_other_names_are_refused_in_one_line(name: str) -> None:
    with pytest.raises(ValueError, match="is not a date like 2026-09-01") as refused:
        named_day_bounds(name, NOW, BERLIN)
    assert str(refused.value).startswith(f"day {name[:40]!r} is not a date like 2026-09-01")
    assert "\n" not in str(refused.value)
