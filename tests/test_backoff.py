"""Reconnect delays: full jitter under an exponential ceiling with a cap."""

from __future__ import annotations

import random
import statistics

from hypothesis import given
from hypothesis import strategies as st

from agent.backoff import backoff_delay


@given(
    attempt=st.integers(min_value=0, max_value=10_000),
    initial=st.floats(min_value=0.01, max_value=10),
    cap=st.floats(min_value=10, max_value=600),
)
def test_delay_is_within_the_ceiling(attempt: int, initial: float, cap: float) -> None:
    delay = backoff_delay(attempt, initial, cap)
    assert 0 <= delay <= min(cap, initial * 2 ** min(attempt, 62))


def test_ceiling_grows_then_caps() -> None:
    top = lambda lo, hi: hi  # noqa: E731 - the largest delay jitter can pick
    assert [backoff_delay(n, 1.0, 20.0, top) for n in range(7)] == [1, 2, 4, 8, 16, 20, 20]


def test_devices_restarting_together_spread_out() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(5, 1.0, 30.0, rng.uniform) for _ in range(5000)]
    # Full jitter: roughly uniform over [0, 30), not bunched at the ceiling.
    assert 13 < statistics.mean(delays) < 17
    assert sum(d < 3 for d in delays) > 300
