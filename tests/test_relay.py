"""Messages between controllers sharing a store: commands packed within
PostgreSQL's payload limit, delivered to the controller holding the device's stream,
and a listener that lost its connection listens again and says it may have missed
some (so that its users resend from the store)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator

import psycopg
import pytest

from controller.relay.asking import ANSWER, ASK, TAKE_WITHIN, TAKEN, Asking
from controller.relay.bus import MAX_PAYLOAD, LocalBus
from controller.relay.device_commands import DeviceCommands, pack, unpack
from controller.relay.pg_bus import PgBus
from controller.store.pg_database import PgDatabase


def test_commands_are_packed_within_the_limit_and_read_back_in_order() -> None:
    commands = [(f"panel-{n}\"'; DROP", bytes([n % 256]) * 300) for n in range(500)]
    messages = list(pack(commands))
    assert len(messages) > 1
    assert all(len(m.encode()) <= MAX_PAYLOAD for m in messages)
    assert [c for m in messages for c in unpack(m)] == commands


def test_a_command_too_large_to_relay_is_left_out() -> None:
    commands = [("a", b"x" * 10), ("huge", b"y" * MAX_PAYLOAD), ("b", b"z")]
    assert [c for m in pack(commands) for c in unpack(m)] == [("a", b"x" * 10), ("b", b"z")]


@pytest.mark.parametrize(
    "payload", ["", "{}", "[1]", '[["a"]]', '[["a", "!!"]]', '[[1, "AA=="]]', "[", "null"]
)
def test_a_message_not_packed_by_a_controller_is_refused(payload: str) -> None:
    with pytest.raises(ValueError, match=r"^not "):
        unpack(payload)


@pytest.fixture
def two_dbs(pg_url: str) -> Iterator[tuple[PgDatabase, PgDatabase]]:
    a, b = PgDatabase(pg_url), PgDatabase(pg_url)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


async def _until(condition: Callable[[], bool], limit: float = 5.0) -> None:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < limit, "not within the bound"
        await asyncio.sleep(0.02)


def test_a_command_reaches_the_controller_holding_the_stream(
    two_dbs: tuple[PgDatabase, PgDatabase],
) -> None:
    got: dict[str, list[tuple[str, bytes]]] = {"a": [], "b": []}
    holds = {"a": {"panel-a"}, "b": {"panel-b"}}

    def here(name: str) -> Callable[[str, bytes], bool]:
        def send(device_id: str, data: bytes) -> bool:
            if device_id in holds[name]:
                got[name].append((device_id, data))
                return True
            return False

        return send

    async def main() -> None:
        buses = [PgBus(db, db.connect_alone) for db in two_dbs]
        relays = [DeviceCommands(bus, here(n), None) for bus, n in zip(buses, "ab", strict=True)]
        for bus in buses:
            await bus.start()
        tasks = [asyncio.create_task(r.run()) for r in relays]
        relays[0].send("panel-a", b"local")
        assert got["a"] == [("panel-a", b"local")], "sent on this controller's stream at once"
        for n in range(300):
            relays[0].send("panel-b", b"launch-%d" % n)
        relays[0].send("panel-gone", b"nobody")
        await _until(lambda: len(got["b"]) == 300)
        await asyncio.sleep(0.3)
        assert got["b"] == [("panel-b", b"launch-%d" % n) for n in range(300)]
        assert got["a"] == [("panel-a", b"local")]
        for task in tasks:
            task.cancel()
        for bus in buses:
            await bus.close()

    asyncio.run(main())


def test_a_listener_that_lost_its_connection_listens_again_and_says_so(
    two_dbs: tuple[PgDatabase, PgDatabase], pg_url: str
) -> None:
    heard: list[str] = []
    gaps: list[float] = []

    async def main() -> None:
        listener = PgBus(two_dbs[0], two_dbs[0].connect_alone)
        listener.subscribe("topic", heard.append)
        listener.on_gap(lambda: gaps.append(time.monotonic()))
        speaker = PgBus(two_dbs[1], two_dbs[1].connect_alone)
        await listener.start()
        await asyncio.to_thread(speaker.publish, "topic", "first")
        await _until(lambda: heard == ["first"])
        assert gaps == []
        with psycopg.connect(pg_url, autocommit=True) as admin:
            ended = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query LIKE 'LISTEN%%'"
            ).fetchall()
        assert ended == [(True,)]
        await _until(lambda: len(gaps) == 1)
        await asyncio.to_thread(speaker.publish, "topic", "after")
        await _until(lambda: heard == ["first", "after"])
        await listener.close()

    asyncio.run(main())


def test_one_controller_alone_hears_itself() -> None:
    heard: list[str] = []

    async def main() -> None:
        bus = LocalBus()
        bus.subscribe("topic", heard.append)
        await bus.start()
        await asyncio.to_thread(bus.publish, "topic", "x")
        await _until(lambda: heard == ["x"])
        await bus.close()

    asyncio.run(main())


def test_a_question_is_answered_by_the_controller_that_takes_it(
    two_dbs: tuple[PgDatabase, PgDatabase],
) -> None:
    async def main() -> None:
        buses = [PgBus(db, db.connect_alone) for db in two_dbs]
        asker, doer = (Asking(bus, None) for bus in buses)

        async def school_here(school: str, taken: Callable[[], Awaitable[None]]) -> str | None:
            if school != "s1":
                return None
            await taken()
            await asyncio.sleep(0.2)
            return f"measured {school}"

        doer.answer("uplink-check", school_here)
        # The asker has no device of its own: its own handler leaves every question.
        asker.answer("uplink-check", lambda school, taken: asyncio.sleep(0, None))
        for bus in buses:
            await bus.start()
        assert await asker.ask("uplink-check", "s1", 5) == "measured s1"
        started = time.monotonic()
        assert await asker.ask("uplink-check", "s2", 60) is None
        assert time.monotonic() - started < TAKE_WITHIN + 1, "told at once nobody took it"
        assert await asker.ask("no-such-kind", "s1", 60) is None
        for bus in buses:
            await bus.close()

    asyncio.run(main())


GARBAGE = [
    "",
    "null",
    "[",
    "[" * 100_000,
    '{"nonce": 1, "kind": "uplink-check", "argument": "s1"}',
    '{"nonce": "n", "kind": ["uplink-check"], "argument": "s1"}',
    '{"nonce": "n", "kind": "uplink-check"}',
    '{"nonce": "n", "answer": {"a": 1}}',
    '"a string"',
]


def test_a_question_answer_or_taken_not_written_by_a_controller_is_ignored() -> None:
    async def main() -> None:
        bus = LocalBus()
        asker, doer = Asking(bus, None), Asking(bus, None)
        asked: list[str] = []

        async def school_here(school: str, taken: Callable[[], Awaitable[None]]) -> str | None:
            asked.append(school)
            await taken()
            return f"measured {school}"

        doer.answer("uplink-check", school_here)
        errors: list[dict[str, object]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))
        await bus.start()
        for payload in GARBAGE:
            for topic in (ASK, TAKEN, ANSWER):
                bus.publish(topic, payload)
        await asyncio.sleep(0.1)
        assert asked == [], "no garbage reached a handler"
        assert errors == [], "none raised"
        # Nothing broke: a real question is still answered, once.
        assert await asker.ask("uplink-check", "s1", 5) == "measured s1"
        assert asked == ["s1"]
        await bus.close()

    asyncio.run(main())
