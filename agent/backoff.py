"""Reconnect delays with exponential backoff and full jitter.

Thousands of panels lose the controller at the same moment (a restart, an uplink
cut); with full jitter each waits a random time in [0, min(cap, initial * 2**n)),
so they come back spread out rather than together.
"""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_delay(
    attempt: int,
    initial: float,
    cap: float,
    uniform: Callable[[float, float], float] = random.uniform,
) -> float:
    """Seconds to wait before reconnect number ``attempt`` (0 for the first)."""
    # Bounding the exponent keeps 2**attempt from overflowing a float after days down.
    ceiling = min(cap, initial * 2 ** min(attempt, 62))
    return uniform(0.0, ceiling)
