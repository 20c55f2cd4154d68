"""The link's spool writes: off its event loop, lesson events in the order they came."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from agent.lessons import LessonEvent
from agent.link import Link
from agent.link_messages import from_spool
from agent.report import Reporter
from agent.settings import AgentSettings
from agent.spool import Spool
from inventory.lessons import EventKind, FailReason
from inventory.model import DeviceKind


class _ThreadsSpool(Spool):
    """A real spool that also notes the thread of each append."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "p1", 1 << 20)
        self.threads: list[int] = []

    def append(self, body: bytes, *, precious: bool) -> int | None:
        self.threads.append(threading.get_ident())
        return super().append(body, precious=precious)


def test_lesson_events_are_stored_off_the_event_loop_in_their_order(tmp_path: Path) -> None:
    spool = _ThreadsSpool(tmp_path / "spool.db")
    settings = AgentSettings("p1", DeviceKind.PANEL, "s1")
    loop_threads: list[int] = []

    async def scenario() -> None:
        loop_threads.append(threading.get_ident())
        link = Link(settings, Reporter(settings), spool, "test")
        for n in range(40):
            kind, reason = (
                (EventKind.FAILED, FailReason.CRASHED) if n % 3 else (EventKind.ENDED, None)
            )
            link.spool_lesson_event(LessonEvent(f"L{n}", f"c{n}", kind, reason, "", 1.0 + n))
        stop = asyncio.Event()
        stop.set()
        # Stopped at once: the link only stores what its writer was given, and returns.
        await link.run(stop)

    asyncio.run(scenario())
    assert len(spool.threads) >= 40
    assert loop_threads[0] not in spool.threads  # each append's fsync off the loop
    stored = [from_spool(m) for m in spool.pending(0, 1000)]
    events = [m.lesson_event.lesson_id for m in stored if m.WhichOneof("body") == "lesson_event"]
    assert events == [f"L{n}" for n in range(40)]
    spool.close()
