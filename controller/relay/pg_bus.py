"""The bus on PostgreSQL: LISTEN on a connection of its own, on a thread of its own;
NOTIFY through the store's pool.

A notification reaches every connection listening when it commits, so a listener
that lost its connection missed what came meanwhile: after making it again the bus
calls its ``on_gap`` handlers, which resend from the store.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

import psycopg
from psycopg import sql

from controller.errors import StoreError
from controller.loops import Backoff
from controller.relay.bus import MAX_PAYLOAD, Handler
from controller.store.sql import SqlDatabase

log = logging.getLogger(__name__)

# How often the listening thread looks up from its socket to see whether to stop.
_POLL = 0.5
_RECONNECT = Backoff(first=0.2, cap=5.0)


class PgBus:
    """A Bus over ``db`` (publishing) and ``connect`` (a new autocommit connection to
    the same database, for listening)."""

    def __init__(
        self,
        db: SqlDatabase,
        connect: Callable[[], psycopg.Connection[object]],
        backoff: Backoff = _RECONNECT,
    ) -> None:
        self._db = db
        self._connect = connect
        self._backoff = backoff
        self._handlers: dict[str, list[Handler]] = {}
        self._gap: list[Callable[[], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._thread: threading.Thread | None = None

    def subscribe(self, topic: str, handler: Handler) -> None:
        self._handlers.setdefault(topic, []).append(handler)

    def on_gap(self, handler: Callable[[], None]) -> None:
        self._gap.append(handler)

    def publish(self, topic: str, payload: str) -> None:
        if len(payload.encode()) > MAX_PAYLOAD:
            raise ValueError(f"a message on {topic} is over {MAX_PAYLOAD} bytes")
        self._db.write("SELECT pg_notify(:topic, :payload)", {"topic": topic, "payload": payload})

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._listen, name="pg-bus", daemon=True)
        self._thread.start()
        # Listening before the controller serves: nothing published after is missed.
        await asyncio.to_thread(self._listening.wait)

    async def close(self) -> None:
        self._stop.set()
        # Unblock start() if it is still waiting for a first connection.
        self._listening.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    def _listen(self) -> None:
        failures = 0
        connected_before = False
        while not self._stop.is_set():
            try:
                with self._connect() as conn:
                    for topic in self._handlers:
                        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(topic)))
                    if connected_before:
                        log.info("bus listening again; resending from the store")
                        self._call_each(self._gap)
                    connected_before = True
                    failures = 0
                    self._listening.set()
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=_POLL):
                            self._deliver(note.channel, note.payload)
            except (psycopg.Error, StoreError) as exc:
                failures += 1
                log.warning("bus connection lost (%s); again in a moment", _first_line(exc))
                self._stop.wait(self._backoff.delay(failures))

    def _deliver(self, topic: str, payload: str) -> None:
        for handler in self._handlers.get(topic, ()):
            self._call(handler, payload)

    def _call_each(self, handlers: list[Callable[[], None]]) -> None:
        for handler in handlers:
            self._call(handler)

    def _call(self, fn: Callable[..., None], *args: str) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
