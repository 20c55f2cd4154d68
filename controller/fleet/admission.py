"""Which device streams the controller takes: the enrollment vouches, not the CA alone.

A certificate signed by the controller's CA proves only that the CA signed it once.
A stream is taken when the device's enrollment still stands behind it: the device is
enrolled, not decommissioned, in the school the certificate names, and the
certificate is the one its latest enrollment issued. Plain logic of values; the
stream handler reads the enrollment and acts on the answer.

At a restart the controller also says when its devices should come back
(``restart_window``): spread over as many seconds as a new process needs to take
them all, so that it is not handed the whole fleet in one second.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

from common.retry_hint import BUSY, RESTART, RESTART_LOW, RetryWindow
from inventory.model import Enrollment


@dataclass(frozen=True, slots=True)
class StreamRefusal:
    """Why a stream is refused: ``reason`` for logs and metrics, ``message`` for the device."""

    reason: str
    message: str


def stream_refusal(
    device_id: str,
    cert_school: str | None,
    serial: str | None,
    enrolled: Enrollment | None,
) -> StreamRefusal | None:
    """None if the stream may open; otherwise why not.

    ``cert_school`` and ``serial`` (hex) are the verified client certificate's, None on
    a controller without agent TLS (a lab: a device known only from its plaintext
    streams may connect, unless it was decommissioned).
    """
    if enrolled is None:
        return (
            None
            if serial is None
            else StreamRefusal(
                "not_enrolled",
                f"device {device_id} is not enrolled; it must enroll with a token of its school",
            )
        )
    if enrolled.revoked_at is not None:
        return StreamRefusal(
            "decommissioned",
            f"device {device_id} is decommissioned; it must be allowed to re-enroll and enroll",
        )
    if serial is None:
        return None
    if cert_school != enrolled.school_id:
        # The enrolled school is not named: the certificate's holder may be anyone.
        return StreamRefusal(
            "wrong_school",
            f"the certificate names school {cert_school}, not device {device_id}'s school; "
            "it must enroll with a token of its school",
        )
    if serial == enrolled.serial:
        return None
    return StreamRefusal(
        "replaced_certificate",
        f"certificate {serial} is not device {device_id}'s current one "
        "(it was renewed or enrolled again since)",
    )


# Streams a controller opens per second after a restart with mutual TLS, on two cores
# (docs/benchmarks.md, restart storm): how widely a fleet is told to spread its return.
RESTART_ADMIT_PER_SECOND = 400.0
# The shortest spread.
_RESTART_SPREAD_MIN = 3.0


def restart_spread(streams: int) -> float:
    """Seconds over which the devices of ``streams`` streams should come back after a
    restart, so that the new process gets about RESTART_ADMIT_PER_SECOND at a time."""
    return max(_RESTART_SPREAD_MIN, streams / RESTART_ADMIT_PER_SECOND)


def restart_window(streams: int) -> RetryWindow:
    """When the devices of ``streams`` open streams should come back after a restart."""
    return RetryWindow(RESTART, RESTART_LOW, RESTART_LOW + restart_spread(streams))


# Streams between their start and their Welcome beyond which new ones are shed: the
# controller's event loop is then seconds behind, and what it would spend on one more
# (a Hello, two store calls) only makes every device wait longer and give up.
OPENING_MAX = 1000
# Seconds over which the rate of Welcomes is measured, and the rate assumed when
# fewer came (a controller that has just started, or a stalled one).
_RATE_WINDOW = 5.0
_RATE_FLOOR = 50.0
# The shortest time a rate is measured over.
_RATE_SPAN_MIN = 0.5
# A shed device waits at least this, and never longer than _BUSY_MAX.
_BUSY_LOW = 1.0
_BUSY_MAX = 60.0


class WelcomeRate:
    """Streams welcomed per second over the last few seconds: how fast the controller
    takes new streams right now (its capacity, while a storm lasts)."""

    def __init__(self) -> None:
        # Monotonic times of the Welcomes of the last _RATE_WINDOW seconds.
        self._times: collections.deque[float] = collections.deque()
        self._first: float | None = None

    def welcomed(self, now: float) -> None:
        """Counts one Welcome at monotonic time ``now``."""
        if self._first is None:
            self._first = now
        self._times.append(now)
        while self._times[0] < now - _RATE_WINDOW:
            self._times.popleft()

    def per_second(self, now: float) -> float:
        """Welcomes per second over the last _RATE_WINDOW seconds, or over the time
        since the first if that is shorter (a controller that has just started)."""
        if self._first is None:
            return 0.0
        while self._times and self._times[0] < now - _RATE_WINDOW:
            self._times.popleft()
        span = min(_RATE_WINDOW, max(now - self._first, _RATE_SPAN_MIN))
        return len(self._times) / span


def busy_window(opening: int, rate: float) -> RetryWindow | None:
    """None while ``opening`` streams (this one counted) are few enough to take one
    more; otherwise when the device should try again: about when the streams ahead of
    it will have been taken at ``rate`` a second, so that it neither comes back into
    the same crowd nor leaves the controller idle at the end of a storm."""
    if opening <= OPENING_MAX:
        return None
    return drain_window(opening, rate)


def drain_window(waiting: int, rate: float) -> RetryWindow:
    """Come back once ``waiting`` streams are taken at ``rate`` a second, spread by a
    quarter of that (at least 2 s)."""
    low = min(max(waiting / max(rate, _RATE_FLOOR), _BUSY_LOW), _BUSY_MAX)
    return RetryWindow(BUSY, low, low + max(2.0, low / 4))
