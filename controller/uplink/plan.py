"""Decisions of the uplink checks, on plain values: when each school is due, which
device measures, and what a device's answer is worth.

Each school has its own slot in the interval, from a hash of its id: a city's
thousands of schools are checked spread over the interval, never all at once, and
each school at the same time of its period whatever controller runs the schedule
(with several controllers, each claims the slots of the schools it holds a device of,
and the store lets one claim each slot).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from inventory.model import DeviceKind
from inventory.uplink import mbps

# Which device measures: the school server first; then wired machines before Wi-Fi
# ones, whose figure would be the Wi-Fi's rather than the uplink's.
_PREFERENCE = (DeviceKind.SERVER, DeviceKind.MONOBLOCK, DeviceKind.PANEL, DeviceKind.LAPTOP)


def slot_offset(school_id: str, interval: float) -> float:
    """Where in each interval the school's slot is, in [0, interval)."""
    digest = hashlib.blake2b(school_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest) / 2**64 * interval


def last_slot(school_id: str, interval: float, now: float) -> float:
    """The school's latest slot at or before ``now``."""
    return now - ((now - slot_offset(school_id, interval)) % interval)


def due_schools(
    schools: Iterable[str],
    last_started: Mapping[str, float],
    since: float,
    now: float,
    interval: float,
) -> list[str]:
    """Schools whose slot passed since their latest check, longest waiting first.

    A school never checked counts as checked at ``since`` (when the schedule started),
    so that a new controller starts measuring spread over its first interval.
    """
    slots = {s: last_slot(s, interval, now) for s in schools}
    due = [s for s, slot in slots.items() if slot > last_started.get(s, since)]
    return sorted(due, key=lambda s: (slots[s], s))


def next_due(schools: Iterable[str], interval: float, now: float) -> float | None:
    """When the next slot of any of ``schools`` comes, after ``now``."""
    return min((last_slot(s, interval, now) + interval for s in schools), default=None)


def pick_device(candidates: Sequence[tuple[str, DeviceKind]]) -> str | None:
    """The device that measures, of a school's online devices able to: see _PREFERENCE."""
    ranked = sorted(candidates, key=lambda c: (_PREFERENCE.index(c[1]), c[0]))
    return ranked[0][0] if ranked else None


def claim_delay(mine: DeviceKind, elsewhere: Iterable[DeviceKind], step: float) -> float:
    """How long a controller waits past a school's slot before it claims the school's
    check, to measure from ``mine`` (its best device able to): one ``step`` per kind
    better than that among the school's online devices whose streams are on other
    controllers (``elsewhere``).

    Each controller holding a device of the school may measure it, and the first to
    claim the slot does; so the one holding the school server claims first, then one
    with a wired machine, and the figure is the uplink's rather than some Wi-Fi's. A
    better device elsewhere that cannot measure (an old agent) costs only the wait.
    """
    rank = _PREFERENCE.index(mine)
    return step * len({k for k in elsewhere if _PREFERENCE.index(k) < rank})


@dataclass(frozen=True, slots=True)
class Measurement:
    """What a device's answer comes to: a figure, or why there is none."""

    received: int
    seconds: float | None
    mbps: float | None
    error: str = ""


def judge(asked: int, ok: bool, message: str, received: int, seconds: float) -> Measurement:
    """A device's answer to a check of ``asked`` bytes, checked for sense.

    A transfer cut by the deadline still measures: what arrived, over the time it
    took. Nothing arrived, or figures that cannot be, is a failure with the reason.
    """
    if not ok:
        return Measurement(0, None, None, message or "the device could not measure")
    if not 0 < received <= asked:
        return Measurement(0, None, None, f"the device reported {received} of {asked} bytes")
    if not (math.isfinite(seconds) and seconds > 0):
        return Measurement(0, None, None, f"the device reported {seconds!r} seconds")
    return Measurement(received, seconds, mbps(received, seconds))
