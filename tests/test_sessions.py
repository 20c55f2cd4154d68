"""Sessions: one per device, the newest wins, a device that stops reading is cut off."""

from __future__ import annotations

import asyncio

import grpc

from controller.fleet.sessions import Closing, SessionRegistry


def test_newer_stream_replaces_older() -> None:
    async def scenario() -> None:
        registry: SessionRegistry[str] = SessionRegistry()
        first = registry.open("p1")
        first.send("hello")
        second = registry.open("p1")
        assert second.stream_id != first.stream_id
        assert await first.next() == "hello"
        closing = await first.next()
        assert isinstance(closing, Closing)
        assert closing.code == grpc.StatusCode.ABORTED
        assert registry.get("p1") is second
        assert not registry.release(first)  # the old one ending leaves the new one be
        assert len(registry) == 1
        assert registry.release(second)
        assert registry.get("p1") is None

    asyncio.run(scenario())


def test_a_device_that_does_not_read_is_cut_off() -> None:
    async def scenario() -> None:
        registry: SessionRegistry[int] = SessionRegistry(outbox_max=3)
        session = registry.open("p1")
        for i in range(10):
            session.send(i)
        assert session.closing is not None
        assert session.closing.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        got = [await session.next() for _ in range(4)]
        assert got[:3] == [0, 1, 2]
        assert got[3] is session.closing

    asyncio.run(scenario())
