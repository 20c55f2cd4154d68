"""Live device streams: at most one per device, the newest wins.

A session is the outbound side of one stream: a queue the stream's handler drains
and writes to the device. Anyone may :meth:`Session.send` to it or
:meth:`Session.close` it; the handler does the writing and the ending.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Generic, TypeVar

import grpc

from common.retry_hint import RetryWindow

M = TypeVar("M")


@dataclass(frozen=True, slots=True)
class Closing:
    """Why a stream ends; ``code`` None ends it normally, otherwise with that status;
    ``retry`` tells the device when to come back (a restart, load shed)."""

    reason: str
    code: grpc.StatusCode | None = None
    message: str = ""
    retry: RetryWindow | None = None


class Session(Generic[M]):
    """The outbound queue of one device's stream."""

    def __init__(
        self,
        device_id: str,
        stream_id: int,
        outbox_max: int,
        capabilities: frozenset[str] = frozenset(),
    ) -> None:
        self.device_id = device_id
        self.stream_id = stream_id
        # What the agent said it handles, in this stream's Hello.
        self.capabilities = capabilities
        self.closing: Closing | None = None
        self._outbox_max = outbox_max
        # Unbounded so that a Closing always fits; send() enforces the bound.
        self._outbox: asyncio.Queue[M | Closing] = asyncio.Queue()

    def send(self, message: M) -> None:
        """Queues a message for the device; a device that stops reading is cut off."""
        if self.closing is not None:
            return
        if self._outbox.qsize() >= self._outbox_max:
            self.close(
                Closing(
                    "slow_reader",
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{self._outbox_max} messages waiting: the agent is not reading its stream",
                )
            )
            return
        self._outbox.put_nowait(message)

    def close(self, closing: Closing) -> None:
        """Ends the stream after what is already queued; the first reason given wins."""
        if self.closing is None:
            self.closing = closing
            self._outbox.put_nowait(closing)

    async def next(self) -> M | Closing:
        """The next message to write, or the Closing that ends the stream."""
        return await self._outbox.get()


def replica_stream_ids() -> range:
    """A share of stream ids no other controller on the store is likely to draw: 2^32
    ids from a random one of 2^30 blocks (two of 1,000 replicas share a block with
    odds under one in two thousand, and the store's stream ids only ever guard a
    device's own stream against its predecessor's late end)."""
    block = secrets.randbits(30) + 1
    return range(block << 32, (block + 1) << 32)


class SessionRegistry(Generic[M]):
    """Which session carries each device now."""

    def __init__(self, outbox_max: int = 1024, ids: range = range(1, 2**32)) -> None:
        self._sessions: dict[str, Session[M]] = {}
        # A stream's id is stored with its device; ``ids`` is this controller's share
        # (replica_stream_ids), so that no two controllers sharing a store give one id.
        self.ids = ids
        self._ids = iter(ids)
        self._outbox_max = outbox_max

    def open(self, device_id: str, capabilities: frozenset[str] = frozenset()) -> Session[M]:
        """A new session for the device; an older one is closed as replaced."""
        session: Session[M] = Session(device_id, next(self._ids), self._outbox_max, capabilities)
        old = self._sessions.get(device_id)
        if old is not None:
            old.close(
                Closing(
                    "replaced",
                    grpc.StatusCode.ABORTED,
                    f"replaced by a newer stream from device {device_id}",
                )
            )
        self._sessions[device_id] = session
        return session

    def release(self, session: Session[M]) -> bool:
        """Forgets the session if it is still the device's current one; says whether it was."""
        if self._sessions.get(session.device_id) is session:
            del self._sessions[session.device_id]
            return True
        return False

    def get(self, device_id: str) -> Session[M] | None:
        """The device's current session, if it has one here."""
        return self._sessions.get(device_id)

    def current(self) -> list[Session[M]]:
        """Every device's current session, in the order they opened."""
        return list(self._sessions.values())

    def __len__(self) -> int:
        return len(self._sessions)
