"""The message writer: one task drains a queue into batched store transactions.

Streams hand heartbeats and command results (one sequence per device, so one
ordered queue) to :meth:`MessageWriter.submit`; the writer gathers what
arrived during ``flush_interval`` (and whatever piles up while a batch is being
written), stores it in one transaction on its own thread, then reports the highest
stored sequence number per device so the sessions can ack. A full queue makes
``submit`` wait, which slows the reading streams and so, through gRPC flow control,
the agents.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from controller.errors import StoreError, StoreUnavailable
from controller.fleet.store import DeviceStore
from controller.loops import Backoff
from controller.store.rows import AgentRow, StoredLessonEvent

log = logging.getLogger(__name__)

# Between tries of a batch while the database cannot be reached.
_RETRY = Backoff(first=0.2, cap=2.0)

OnStored = Callable[[dict[str, int]], None]
OnFlush = Callable[[int, float], None]
OnLessonEvents = Callable[[list[StoredLessonEvent]], None]


def highest_seq(rows: Sequence[AgentRow]) -> dict[str, int]:
    """Highest sequence number per device in a batch."""
    acks: dict[str, int] = {}
    for row in rows:
        if row.seq > acks.get(row.device_id, 0):
            acks[row.device_id] = row.seq
    return acks


class MessageWriter:
    """Queues device messages and writes them in batches from a single task."""

    def __init__(
        self,
        store: DeviceStore,
        executor: ThreadPoolExecutor,
        *,
        flush_interval: float,
        batch_max: int,
        queue_max: int,
        on_stored: OnStored,
        on_flush: OnFlush,
        on_lesson_events: OnLessonEvents = lambda events: None,
    ) -> None:
        self._store = store
        self._executor = executor
        self._flush_interval = flush_interval
        self._batch_max = batch_max
        # None marks the end: the writer flushes what came before it and stops.
        self._queue: asyncio.Queue[AgentRow | None] = asyncio.Queue(queue_max)
        self._on_stored = on_stored
        self._on_flush = on_flush
        self._on_lesson_events = on_lesson_events
        self._closing = False
        self._stop_retrying = asyncio.Event()

    async def submit(self, row: AgentRow) -> None:
        """Queues one message; waits while the queue is full."""
        await self._queue.put(row)

    def pending(self) -> int:
        """Heartbeats queued and not yet written."""
        return self._queue.qsize()

    async def run(self) -> None:
        """Writes batches until :meth:`close`; then writes what is left and returns."""
        closing = False
        while not closing:
            first = await self._queue.get()
            if first is None:
                break
            await asyncio.sleep(self._flush_interval)
            rows = [first]
            while len(rows) < self._batch_max and not self._queue.empty():
                row = self._queue.get_nowait()
                if row is None:
                    closing = True
                    break
                rows.append(row)
            await self._flush(rows)
        # Streams are closed before the writer, so at most a straggler follows the marker.
        rest = [self._queue.get_nowait() for _ in range(self._queue.qsize())]
        await self._flush([row for row in rest if row is not None])

    async def close(self) -> None:
        """Asks :meth:`run` to write everything queued so far and return."""
        self._closing = True
        self._stop_retrying.set()
        await self._queue.put(None)

    async def _flush(self, rows: list[AgentRow]) -> None:
        if not rows:
            return
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        unavailable = 0
        while True:
            try:
                events = await loop.run_in_executor(
                    self._executor, self._store.record_messages, rows
                )
                break
            except StoreUnavailable as exc:
                # The database restarts or fails over: the same batch again, and nothing
                # acked meanwhile, for an ack covers every earlier message of a device.
                # The queue fills and its limit slows the streams; none is closed.
                unavailable += 1
                if self._closing:
                    log.error(
                        "message batch not stored at shutdown rows=%d error=%s", len(rows), exc
                    )
                    return
                if unavailable == 1:
                    log.warning("store unavailable; holding rows=%d error=%s", len(rows), exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_retrying.wait(), _RETRY.delay(unavailable))
            except StoreError as exc:
                # Not acked, so the agents keep these and send them again.
                log.error("message batch not stored rows=%d error=%s", len(rows), exc)
                return
        if unavailable:
            log.info("store available again; batch stored after %d tries", unavailable + 1)
        self._on_flush(len(rows), time.perf_counter() - started)
        if events:
            self._on_lesson_events(events)
        self._on_stored(highest_seq(rows))
