"""Reconnect delays with exponential backoff and full jitter, and the controller's word.

Thousands of panels lose the controller at the same moment (a restart, an uplink
cut); with full jitter each waits a random time in [0, min(cap, initial * 2**n)),
so they come back spread out rather than together. A controller that says why it
ended the stream (common/retry_hint.py) is believed: the device waits what it was
told, and after a restart keeps its later attempts short (``restart_cap``) until a
stream stays up, since the controller is coming back within seconds.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from common.retry_hint import RESTART, RetryHint

# Attempts after a restart notice made with the short cap, each waiting for the
# controller to listen again; a controller not back by then is down, not restarting.
RESTART_ATTEMPTS = 4


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


class Reconnects:
    """How long a device waits before each new stream: plain values in, seconds out."""

    def __init__(
        self,
        initial: float,
        cap: float,
        restart_cap: float,
        reset_after: float,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self._initial = initial
        self._cap = cap
        self._restart_cap = min(restart_cap, cap)
        self._reset_after = reset_after
        self._uniform = uniform
        self._attempt = 0
        # Attempts still made the restart's way; 0: plain backoff.
        self._restart_left = 0

    @property
    def attempt(self) -> int:
        """Reconnects since the last stream that stayed up."""
        return self._attempt

    @property
    def restarting(self) -> bool:
        """Whether the controller said it is restarting, and it is not back yet."""
        return self._restart_left > 0

    def delay(self, stayed_up: float, hint: RetryHint | None, unread: bool = False) -> float:
        """Seconds to wait after a stream that was up ``stayed_up`` seconds after its
        Welcome (0 without one) ended, with what the controller said, if anything.

        ``unread``: the stream ended without the controller's word (common/
        retry_hint.py ended_unsaid); likely a restart, so later attempts are kept short
        and wait for the listener. The caller passes the wait it drew from its
        Welcome's spread as ``hint``; without one (an older controller), plain backoff
        with the short cap.
        A controller not back after RESTART_ATTEMPTS attempts is not restarting: plain
        backoff again, so that a fleet does not knock every few seconds for days."""
        if stayed_up >= self._reset_after:
            self._attempt = 0
            self._restart_left = 0
        elif self._restart_left:
            self._restart_left -= 1
        if (hint is not None and hint.reason == RESTART) or (unread and hint is None):
            self._attempt = 0
            self._restart_left = RESTART_ATTEMPTS
        if hint is not None:
            # The controller drew this wait for this device; it already carries the jitter.
            if hint.reason != RESTART:
                self._attempt += 1
            return hint.seconds
        cap = self._restart_cap if self._restart_left else self._cap
        delay = backoff_delay(self._attempt, self._initial, cap, self._uniform)
        self._attempt += 1
        return delay
