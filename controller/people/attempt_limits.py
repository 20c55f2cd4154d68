"""Refused sign-ins and enrollments, per source address: a budget, and their folding.

Pure logic of values and ``now``. ``source_of`` names where a call came from (its
peer's address without the port; an IPv6 address by its /64, which one host
usually holds whole). ``FailureBudget`` is a token bucket per source: each
refused attempt takes a token, ``per_minute`` come back each minute, at most
``burst`` are held; a source with none left is refused outright until one comes
back. ``Folds`` keeps the audit log and the log to about one entry per source and
kind per minute: the first refused attempt of a quiet source is recorded as it is,
the others are counted and recorded together when their minute ends.

Both hold at most ``max_sources`` sources (the least recently seen are dropped),
so that many addresses cost bounded memory.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass

WINDOW = 60.0
MAX_SOURCES = 10_000


def source_of(peer: str) -> str:
    """``1.2.3.4`` for gRPC's ``ipv4:1.2.3.4:5678``; ``2001:db8:1:2::/64`` for an IPv6
    peer (``ipv6:%5B2001:db8:1:2::9%5D:5678``); the peer's kind otherwise (``unix``)."""
    kind, _, rest = urllib.parse.unquote(peer).partition(":")
    host = rest.rpartition(":")[0].strip("[]") if kind in ("ipv4", "ipv6") else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return kind[:16] or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        if address.is_loopback:
            return str(address)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass
class _Bucket:
    tokens: float
    at: float


class FailureBudget:
    """Refused attempts each source may make: ``burst`` at once, ``per_minute`` after."""

    def __init__(
        self, per_minute: float = 10, burst: float = 10, max_sources: int = MAX_SOURCES
    ) -> None:
        self._rate = per_minute / 60
        self._burst = burst
        self._max = max_sources
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def _bucket(self, source: str, now: float) -> _Bucket:
        bucket = self._buckets.pop(source, None)
        if bucket is None:
            bucket = _Bucket(self._burst, now)
        else:
            refill = max(0.0, now - bucket.at) * self._rate
            bucket = _Bucket(min(self._burst, bucket.tokens + refill), now)
        self._buckets[source] = bucket
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return bucket

    def wait(self, source: str, now: float) -> float:
        """Seconds until ``source`` may be refused again; 0 while it has budget left."""
        bucket = self._bucket(source, now)
        return 0.0 if bucket.tokens >= 1 else (1 - bucket.tokens) / self._rate

    def refused(self, source: str, now: float) -> None:
        """One refused attempt from ``source`` takes a token."""
        bucket = self._bucket(source, now)
        bucket.tokens = max(0.0, bucket.tokens - 1)

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass(frozen=True)
class Folded:
    """Refused attempts from one source, of one kind, in one window, recorded as one."""

    source: str
    kind: str
    count: int
    since: float
    last: str


@dataclass
class _Window:
    start: float
    # The first attempt of a quiet source is recorded on its own.
    first: bool = True
    count: int = 0
    last: str = ""


class Folds:
    """Which refused attempts are recorded one by one, and which as one per window."""

    def __init__(self, window: float = WINDOW, max_sources: int = MAX_SOURCES) -> None:
        self._window = window
        self._max = max_sources
        self._open: OrderedDict[tuple[str, str], _Window] = OrderedDict()

    def add(self, source: str, kind: str, message: str, now: float) -> bool:
        """Counts a refused attempt; True if it is to be recorded on its own, now (the
        first of a quiet source), False if it is folded into its window's entry."""
        key = (source, kind)
        window = self._open.pop(key, None)
        if window is None:
            window = _Window(now)
        self._open[key] = window
        while len(self._open) > self._max:
            self._open.popitem(last=False)
        if window.first:
            window.first = False
            return True
        window.count += 1
        window.last = message
        return False

    def due(self, now: float, everything: bool = False) -> list[Folded]:
        """The windows that have ended with attempts folded in them (``everything``:
        every window that has any, at shutdown). A source folded from goes on being
        folded for one more window; one that went quiet is forgotten."""
        found: list[Folded] = []
        for key, window in list(self._open.items()):
            ended = now >= window.start + self._window
            if window.count and (ended or everything):
                found.append(Folded(*key, window.count, window.start, window.last))
                self._open[key] = _Window(now, first=False)
            elif ended:
                del self._open[key]
        return found

    def __len__(self) -> int:
        return len(self._open)
