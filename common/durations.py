"""Durations as people write them: 90s, 30m, 12h, 7d."""

from __future__ import annotations

import re

_DURATION = re.compile(r"(\d+)([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """Seconds in ``text``; ValueError with a message naming it if it is not a duration."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 90s, 30m, 12h or 7d")
    return int(match.group(1)) * _UNIT[match.group(2)]
