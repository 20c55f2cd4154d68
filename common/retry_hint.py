"""When a device should come back: the controller's word, in a stream's trailers.

A controller that ends streams on purpose (it is restarting, or it sheds load while
thousands connect at once) ends them with UNAVAILABLE and two trailing metadata
entries: why (``restart`` or ``busy``) and how many milliseconds to wait, already
jittered per stream by the controller so that its devices come back spread out.
The agent honours the wait; a hint it cannot read is ignored (plain backoff).

A stream can also end without that word: the controller's process ended (a shutdown
with more streams than its grace could tell, a crash) or the connection was lost.
For that case the Welcome names a spread in advance, and the device draws its own
wait from it (``unsaid_restart``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

RETRY_AFTER_KEY = "schoolfleet-retry-after-ms"
REASON_KEY = "schoolfleet-closing"
RESTART = "restart"
BUSY = "busy"
# The earliest a device comes back after a restart: a device that comes back before
# the new process listens waits for it on its connection.
RESTART_LOW = 1.0
# A wait longer than this is not believed: a device never sits out an hour on one word.
_WAIT_MAX_MS = 600_000


@dataclass(frozen=True, slots=True)
class RetryWindow:
    """What the controller tells a stream it ends: come back within [low, high) seconds."""

    reason: str
    low: float
    high: float

    def metadata(
        self, uniform: Callable[[float, float], float] = random.uniform
    ) -> tuple[tuple[str, str], ...]:
        """The trailers for one stream, its wait drawn from the window."""
        wait_ms = round(uniform(self.low, self.high) * 1000)
        return ((REASON_KEY, self.reason), (RETRY_AFTER_KEY, str(wait_ms)))


@dataclass(frozen=True, slots=True)
class RetryHint:
    """What a device read from the trailers of a stream the controller ended."""

    reason: str
    seconds: float


# What grpc's Python client reports when a device's write crosses the controller's end
# of the stream: the call's real status and trailers, the hint among them, are lost.
_MASKED_END = ("INTERNAL", "Internal error from Core")


def masked_end(code: str, details: str) -> bool:
    """Whether a stream's status is grpc's stand-in for an end the device could not
    read (its write crossed the controller's end of the stream)."""
    return (code, details) == _MASKED_END


def ended_unsaid(code: str, details: str) -> bool:
    """Whether a stream that had its Welcome ended without the controller's word: its
    end was masked (``masked_end``), or the connection went (UNAVAILABLE: the
    controller's process ended, or the network). Likely a restart."""
    return code == "UNAVAILABLE" or masked_end(code, details)


def unsaid_restart(
    spread: float, uniform: Callable[[float, float], float] = random.uniform
) -> RetryHint | None:
    """The device's own wait after a stream ``ended_unsaid``, drawn from the spread
    (seconds) its Welcome named; None without one (a controller older than the field)."""
    if spread <= 0:
        return None
    return RetryHint(RESTART, uniform(RESTART_LOW, min(RESTART_LOW + spread, _WAIT_MAX_MS / 1000)))


def read_hint(trailers: Iterable[tuple[str, str | bytes]] | None) -> RetryHint | None:
    """The hint in a stream's trailing metadata, or None if there is none it can trust."""
    found = {
        key: value.decode(errors="replace") if isinstance(value, bytes) else value
        for key, value in trailers or ()
        if key in (RETRY_AFTER_KEY, REASON_KEY)
    }
    reason, wait = found.get(REASON_KEY), found.get(RETRY_AFTER_KEY, "")
    if reason not in (RESTART, BUSY) or not wait.isdigit() or len(wait) > 9:
        return None
    return RetryHint(reason, min(int(wait), _WAIT_MAX_MS) / 1000)
