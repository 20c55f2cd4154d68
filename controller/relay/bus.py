"""The channel between controllers: publish a text on a topic, and every controller
sharing the store (this one included) gets it.

With one controller on SQLite the bus is this process (``LocalBus``). On PostgreSQL it
is LISTEN/NOTIFY (pg_bus.py), delivered at most once per listening connection: when
the connection is lost and made again, what was published meanwhile is gone, and the
bus says so (``on_gap``) so that its users resend from the store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

Handler = Callable[[str], None]


class Bus(Protocol):
    def subscribe(self, topic: str, handler: Handler) -> None:
        """``handler(payload)`` runs on the event loop for every message on ``topic``;
        subscribe before ``start``."""

    def on_gap(self, handler: Callable[[], None]) -> None:
        """``handler()`` runs on the event loop when messages may have been missed."""

    def publish(self, topic: str, payload: str) -> None:
        """Sends ``payload`` (at most ``MAX_PAYLOAD`` bytes of UTF-8) to every
        controller; blocking, so called off the event loop."""

    async def start(self) -> None:
        """Starts listening; messages published after this returns are delivered."""

    async def close(self) -> None: ...


# PostgreSQL's limit on a notification's payload is 8,000 bytes.
MAX_PAYLOAD = 7900


class LocalBus:
    """The bus of a controller that shares its store with no other."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def subscribe(self, topic: str, handler: Handler) -> None:
        self._handlers.setdefault(topic, []).append(handler)

    def on_gap(self, handler: Callable[[], None]) -> None:
        # Nothing is ever missed in one process.
        del handler

    def publish(self, topic: str, payload: str) -> None:
        if self._loop is None:
            return
        for handler in self._handlers.get(topic, ()):
            self._loop.call_soon_threadsafe(handler, payload)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def close(self) -> None:
        self._loop = None
