"""Refused sign-ins (admin bearer tokens) and enrollments, per source address.

Each refused attempt takes from its source's budget (controller/people/attempt_limits.py)
and is audited and logged as usual. A source that has spent its budget is answered
RESOURCE_EXHAUSTED, before its credential is even looked at, until the budget has
a token again; those answers reach the audit log and the log as about one entry
per source and minute, with a count, so that a flood fills neither. A call from a
source within its budget costs one dictionary look-up more.

The admin guard asks ``busy`` before it authenticates and tells ``refused`` when it
refuses a token; enrollment asks ``busy`` first thing, and its audit entries pass
through ``sink``, which takes each refused one from the budget.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime

from controller.people.attempt_limits import FailureBudget, Folded, Folds, source_of
from controller.people.audit import AuditSink
from inventory.people import AuditEntry, Outcome

log = logging.getLogger(__name__)
FLUSH_EVERY = 5.0


def _folded_entry(f: Folded, now: float) -> AuditEntry:
    since = datetime.fromtimestamp(f.since, UTC).isoformat(timespec="seconds")
    return AuditEntry(
        entry_id=0,
        at=now,
        actor="-",
        action=f.kind,
        target="",
        school_id="",
        outcome=Outcome.DENIED,
        message=f"refused again from {f.source} since {since} ({f.count} attempts); "
        f"the last: {f.last}"[:500],
        peer=f.source,
    )


class Refusals:
    """The budget of refused attempts per source and kind, and their audit entries folded."""

    def __init__(
        self,
        sink: AuditSink,
        budget: FailureBudget | None = None,
        folds: Folds | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._sink = sink
        self._budget = budget if budget is not None else FailureBudget()
        self._folds = folds if folds is not None else Folds()
        self._now = now

    async def busy(self, peer: str, kind: str) -> str | None:
        """The answer (RESOURCE_EXHAUSTED) for a source that has spent its budget; None
        if it may go on. Such answers are folded: the first of a quiet source is
        audited and logged at once, the others as one entry when their minute ends."""
        source, now = source_of(peer), self._now()
        wait = self._budget.wait(f"{kind} {source}", now)
        if not wait:
            return None
        message = f"too many refused attempts from {source}: try again in {math.ceil(wait)} s"
        if self._folds.add(source, kind, message, now):
            entry = AuditEntry(0, now, "-", kind, "", "", Outcome.DENIED, message, source)
            log.warning("%s refused peer=%s: %s", kind, source, message)
            await self._sink(entry)
        return message

    def refused(self, peer: str, kind: str) -> None:
        """One refused attempt from ``peer`` (audited and logged as usual): it takes
        from its source's budget."""
        self._budget.refused(f"{kind} {source_of(peer)}", self._now())

    def sink(self, inner: AuditSink, kind: str = "enroll") -> AuditSink:
        """``inner`` for entries of ``kind``, each refused one taken from its source's
        budget."""

        async def counting(entry: AuditEntry) -> None:
            if entry.outcome is Outcome.DENIED:
                self.refused(entry.peer, kind)
            await inner(entry)

        return counting

    async def flush(self, everything: bool = False) -> None:
        """Writes the entries of the windows that have ended (``everything``: all)."""
        now = self._now()
        for folded in self._folds.due(now, everything):
            entry = _folded_entry(folded, now)
            log.warning("%s refused peer=%s: %s", folded.kind, folded.source, entry.message)
            await self._sink(entry)

    async def run(self) -> None:
        """Flushes every few seconds until cancelled; an error is logged, not fatal."""
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            try:
                await self.flush()
            except Exception:
                log.exception("refused attempts not flushed")

    async def close(self) -> None:
        """Writes what is still folded (at shutdown, while the store is open)."""
        await self.flush(everything=True)
