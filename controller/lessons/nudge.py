"""The dispatcher as every controller sharing the store sees it.

The dispatcher runs on the one controller holding its lease (controller/leases/). A
new schedule or a lesson by hand may arrive at any controller: there it wakes the
dispatcher through the bus, and a lesson by hand waits for a pass that started after
it asked (the holder says which pass by the asker's nonce).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from typing import Any, Protocol

from controller.errors import StoreError
from controller.lessons.dispatcher import Dispatcher
from controller.offload import Offload

log = logging.getLogger(__name__)

WAKE = "schoolfleet_lessons_wake"
PASSED = "schoolfleet_lessons_passed"


class Bus(Protocol):
    """The channel between controllers (controller/relay/bus.py)."""

    def subscribe(self, topic: str, handler: Callable[[str], None]) -> None: ...

    def publish(self, topic: str, payload: str) -> None: ...


class DispatchNudge:
    """``wake()`` and ``pass_now()`` of the dispatcher, wherever it runs."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        runs_here: Callable[[], bool],
        bus: Bus,
        executor: Executor | None,
    ) -> None:
        self._dispatcher = dispatcher
        self._runs_here = runs_here
        self._bus = bus
        self._off = Offload(executor)
        self._asked: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        bus.subscribe(WAKE, self._woken)
        bus.subscribe(PASSED, self._passed)

    def wake(self) -> None:
        """Look at the schedule now: it changed."""
        if self._runs_here():
            self._dispatcher.wake()
        else:
            self._spawn(self._publish(WAKE, ""))

    async def pass_now(self) -> None:
        """Returns once a pass that started after this call has ended, here or on the
        controller holding the dispatcher (bound it with ``asyncio.timeout``)."""
        if self._runs_here():
            await self._dispatcher.pass_now()
            return
        nonce = secrets.token_hex(8)
        passed = self._asked[nonce] = asyncio.Event()
        try:
            await self._publish(WAKE, nonce)
            await passed.wait()
        finally:
            del self._asked[nonce]

    def _woken(self, nonce: str) -> None:
        if not self._runs_here():
            return
        if not nonce:
            self._dispatcher.wake()
            return

        async def answer() -> None:
            await self._dispatcher.pass_now()
            await self._publish(PASSED, nonce)

        self._spawn(answer())

    def _passed(self, nonce: str) -> None:
        event = self._asked.get(nonce)
        if event is not None:
            event.set()

    async def _publish(self, topic: str, payload: str) -> None:
        try:
            await self._off(self._bus.publish, topic, payload)
        except StoreError as exc:
            # The holder's own schedule still finds the change within its idle wait.
            log.warning("dispatcher not nudged: %s", exc)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
