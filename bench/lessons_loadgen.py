"""A lesson load-generator worker: simulated panels that answer LaunchLesson at once.

Run by bench/lesson_fanout.py as ``python -m bench.lessons_loadgen``, driven over
stdin and stdout with one JSON object per line, like bench/loadgen.py. Each panel
has its own gRPC channel (one TCP connection), sends Hello as a panel of its school
and room, waits for the Welcome, then sends heartbeats at the production interval
from a random phase (``--heartbeat-interval 0``: none) and reads its stream. When a
Command with ``launch_lesson`` arrives, the panel notes when (wall time read through
the monotonic clock, so a clock step cannot move it), then answers at once with a
LessonEvent "launched", as an agent whose kiosk program started instantly would.

Commands: ``sample`` (counters), ``results`` (every panel's receive time), ``stop``
(half-close every stream, final counters, exit). End of input is a stop.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import json
import logging
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from bench import wire
from bench.loadgen import connect_each, open_stream
from protos.schoolfleet.v1 import agent_pb2, fleet_pb2

log = logging.getLogger("bench.lessons_loadgen")

Call = grpc.aio.StreamStreamCall[bytes, bytes]
ROOMS_PER_SCHOOL = 50


class Clock:
    """Wall time that only moves with the monotonic clock after it is made."""

    def __init__(self) -> None:
        self._wall = time.time()
        self._mono = time.monotonic()

    def now(self) -> float:
        """Seconds since the epoch."""
        return self._wall + (time.monotonic() - self._mono)


@dataclass(slots=True)
class Panel:
    """One simulated panel and what happened on its stream."""

    device_id: str
    hello: bytes
    call: Call | None = None
    next_seq: int = 1
    open: bool = False
    error: str | None = None
    # When the first LaunchLesson arrived (wall seconds), and how many arrived.
    launch_at: float | None = None
    launches: int = 0
    # Messages after the Welcome that are not a LaunchLesson (acks, mostly).
    others: int = 0
    answered: int = 0
    heartbeats: int = 0
    # One write at a time on a gRPC call: heartbeats and answers take turns.
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def panel_place(index: int) -> tuple[str, str, str]:
    """Device, school and room of panel ``index``: one panel per room, 50 rooms a school."""
    school, room = divmod(index, ROOMS_PER_SCHOOL)
    return f"bench-panel-{index:05d}", f"s{school:03d}", f"r{room:02d}"


def launched_event(seq: int, command: agent_pb2.Command, at: float) -> bytes:
    """The panel's answer: its lesson is on screen."""
    event = agent_pb2.LessonEvent(
        lesson_id=command.launch_lesson.lesson_id,
        command_id=command.command_id,
        kind=agent_pb2.LessonEvent.KIND_LAUNCHED,
    )
    event.at.FromNanoseconds(int(at * 1e9))
    return agent_pb2.AgentMessage(seq=seq, lesson_event=event).SerializeToString()


class Panels:
    """The panels of one worker process and the tasks that drive them."""

    def __init__(self, target: str, panels: list[Panel], heartbeat_interval: float) -> None:
        self._target = target
        self._panels = panels
        self._interval = heartbeat_interval
        self._body = wire.heartbeat_body(full=False)
        self._full_body = wire.heartbeat_body(full=True)
        wire.check_encoding(self._body)
        wire.check_encoding(self._full_body)
        self._channels: list[grpc.aio.Channel] = []
        self._clock = Clock()
        self._stopping = False

    async def connect_all(self, concurrency: int, per_panel: float) -> dict[str, object]:
        """Opens every panel's stream; see bench.loadgen.connect_each."""
        return await connect_each(self._panels, self._connect, concurrency, per_panel, self._errors)

    async def _connect(self, panel: Panel) -> None:
        call, last_seq = await open_stream(self._target, self._channels, panel.hello)
        panel.call = call
        panel.next_seq = last_seq + 1
        panel.open = True
        panel.tasks.append(asyncio.create_task(self._read(panel, call)))
        if self._interval > 0:
            panel.tasks.append(asyncio.create_task(self._beat(panel, call)))

    async def _read(self, panel: Panel, call: Call) -> None:
        try:
            while True:
                raw = await call.read()
                at = self._clock.now()  # first thing: the receive time is the figure
                if not isinstance(raw, bytes):
                    break  # the server ended the stream
                message = agent_pb2.ControllerMessage.FromString(raw)
                command = message.command
                if command.WhichOneof("action") != "launch_lesson":
                    panel.others += 1
                    continue
                panel.launches += 1
                if panel.launch_at is None:
                    panel.launch_at = at
                    await self._write(
                        panel, call, functools.partial(launched_event, command=command, at=at)
                    )
                    panel.answered += 1
        except grpc.aio.AioRpcError as exc:
            if not self._stopping:
                panel.error = f"{exc.code().name}: {exc.details()}"
        finally:
            panel.open = False

    async def _write(self, panel: Panel, call: Call, build: Callable[[int], bytes]) -> None:
        """Writes ``build(seq)`` with the panel's next sequence number."""
        async with panel.write_lock:
            seq = panel.next_seq
            panel.next_seq += 1
            await call.write(build(seq))

    async def _beat(self, panel: Panel, call: Call) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + random.uniform(0.0, self._interval)
        while panel.open and not self._stopping:
            await asyncio.sleep(max(0.0, due - loop.time()))
            full = panel.heartbeats % wire.FULL_EVERY == 0
            body = self._full_body if full else self._body
            try:
                await self._write(panel, call, functools.partial(wire.heartbeat, body=body))
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                return  # the reader records why the stream ended
            panel.heartbeats += 1
            due += self._interval

    def sample(self, event: str = "sample") -> dict[str, object]:
        """The worker's counters now."""
        return {
            "event": event,
            "panels": len(self._panels),
            "open": sum(p.open for p in self._panels),
            "launched": sum(p.launch_at is not None for p in self._panels),
            "launches": sum(p.launches for p in self._panels),
            "others": sum(p.others for p in self._panels),
            "answered": sum(p.answered for p in self._panels),
            "heartbeats": sum(p.heartbeats for p in self._panels),
            "errors": self._errors(),
        }

    def results(self) -> dict[str, object]:
        """Every panel's LaunchLesson receive time (wall seconds) that got one."""
        return {
            **self.sample("results"),
            "launch_at": [p.launch_at for p in self._panels if p.launch_at is not None],
        }

    def _errors(self) -> dict[str, int]:
        counts = collections.Counter(p.error for p in self._panels if p.error)
        return dict(counts.most_common(5))

    async def stop(self, grace: float) -> None:
        """Stops heartbeats and half-closes every stream, as a stopping agent does."""
        self._stopping = True
        for panel in self._panels:
            for task in panel.tasks[1:]:
                if not panel.write_lock.locked():
                    task.cancel()  # a write cancelled midway would cancel the whole call
        await _wait([t for p in self._panels for t in p.tasks[1:]], grace)
        calls = [p.call for p in self._panels if p.open and p.call is not None]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(c.done_writing() for c in calls), return_exceptions=True),
                grace,
            )
        await _wait([p.tasks[0] for p in self._panels if p.tasks], grace)
        await _wait([asyncio.create_task(c.close(None)) for c in self._channels], grace)


async def _wait(tasks: list[asyncio.Task[None]], grace: float) -> None:
    """Waits up to ``grace`` seconds for the tasks, then cancels what is left."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=grace)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _emit(record: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def panels_for(first: int, count: int) -> list[Panel]:
    """Panels ``first`` .. ``first+count-1``, each in its own room."""
    panels = []
    for i in range(first, first + count):
        device_id, school_id, room_id = panel_place(i)
        hello = agent_pb2.AgentMessage(
            seq=0,
            hello=agent_pb2.Hello(
                device_id=device_id,
                kind=fleet_pb2.DEVICE_KIND_PANEL,
                school_id=school_id,
                room_id=room_id,
                hostname=device_id,
                agent_version="bench",
                capabilities=["ping", "lessons"],
            ),
        ).SerializeToString()
        panels.append(Panel(device_id, hello))
    return panels


async def run(args: argparse.Namespace) -> None:
    """Connects, then obeys the orchestrator's commands until stop or end of input."""
    panels = Panels(args.target, panels_for(args.first, args.count), args.heartbeat_interval)
    _emit(await panels.connect_all(args.concurrency, args.connect_timeout))
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        command = line.strip()
        if command == "sample":
            _emit(panels.sample())
        elif command == "results":
            _emit(panels.results())
        elif command == "stop" or not line:
            break
    await panels.stop(grace=5.0)
    _emit(panels.sample("stopped"))


def main() -> None:
    """``python -m bench.lessons_loadgen --target HOST:PORT --first I --count N``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="HOST:PORT of the server under test")
    parser.add_argument("--first", type=int, default=0, help="index of the first panel")
    parser.add_argument("--count", type=int, required=True, help="panels in this process")
    parser.add_argument(
        "--heartbeat-interval", type=float, default=30.0, help="seconds; 0: no heartbeats"
    )
    parser.add_argument("--concurrency", type=int, default=64, help="connects in flight")
    parser.add_argument("--connect-timeout", type=float, default=60.0, help="per panel, s")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="lessons_loadgen: %(message)s")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
