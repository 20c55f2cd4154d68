"""Days in the schools' time zone: what "today" (or another day someone names) spans."""

from __future__ import annotations

import datetime as dt
import re
from zoneinfo import ZoneInfo

# One spelling: fromisoformat alone would also take 20260901 and 2026-W36-1.
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_SHIFTS = {"today": 0, "tomorrow": 1, "yesterday": -1}


def day_bounds(now: float, zone: ZoneInfo) -> tuple[float, float]:
    """The start and end of ``now``'s day in the schools' time zone, as Unix seconds."""
    local = dt.datetime.fromtimestamp(now, zone)
    start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    end = (start + dt.timedelta(days=1, hours=2)).replace(hour=0)
    return start.timestamp(), end.timestamp()


def _date(name: str) -> dt.date:
    refused = ValueError(
        f"day {name[:40]!r} is not a date like 2026-09-01, today, tomorrow or yesterday"
    )
    if not _DATE.fullmatch(name):
        raise refused
    try:
        return dt.date.fromisoformat(name)
    except ValueError:
        raise refused from None


def named_day_bounds(name: str, now: float, zone: ZoneInfo) -> tuple[float, float]:
    """The bounds of a day named as ``YYYY-MM-DD``, ``today``, ``tomorrow`` or
    ``yesterday``; ValueError names what was wrong."""
    if name in _SHIFTS:
        day = dt.datetime.fromtimestamp(now, zone).date() + dt.timedelta(days=_SHIFTS[name])
    else:
        day = _date(name)
    # Noon is inside the day whatever the zone's clock change does that day.
    noon = dt.datetime.combine(day, dt.time(12), zone)
    return day_bounds(noon.timestamp(), zone)
