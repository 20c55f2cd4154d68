"""Asking the other controllers sharing the store for what only one of them can do
(the one holding a device's stream), and waiting for its answer.

A question names a kind of work and its argument; every controller's handler for
that kind looks at it and either leaves it (None: not this controller's to do) or
says it takes it, does it and answers with a short text. The first answer is the
asker's. No controller taking it within a few seconds means none can, and the asker
is told at once rather than after the work's own timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any

from controller.errors import StoreError
from controller.offload import Offload
from controller.relay.bus import Bus

log = logging.getLogger(__name__)

ASK = "schoolfleet_ask"
TAKEN = "schoolfleet_taken"
ANSWER = "schoolfleet_answer"

# What a controller does with a question's argument: it awaits ``taken()`` once it
# knows the work is its own, and returns the answer; None leaves the question to others.
Handler = Callable[[str, Callable[[], Awaitable[None]]], Awaitable[str | None]]
# How long a question waits for a controller to take it.
TAKE_WITHIN = 5.0


def _fields(payload: str, *names: str) -> list[str] | None:
    try:
        message = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(message, dict):
        return None
    values = [message.get(name) for name in names]
    return values if all(isinstance(v, str) for v in values) else None  # type: ignore[return-value]


class Asking:
    """Questions to the other controllers, and this controller's answers to theirs."""

    def __init__(self, bus: Bus, executor: Executor | None) -> None:
        self._bus = bus
        self._off = Offload(executor)
        self._handlers: dict[str, Handler] = {}
        self._waiting: dict[str, asyncio.Future[str]] = {}
        self._taken: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        bus.subscribe(ASK, self._asked)
        bus.subscribe(TAKEN, self._was_taken)
        bus.subscribe(ANSWER, self._answered)

    def answer(self, kind: str, handler: Handler) -> None:
        """This controller answers questions of ``kind`` with ``handler``."""
        self._handlers[kind] = handler

    async def ask(self, kind: str, argument: str, answer_within: float) -> str | None:
        """The answer of the controller that took the question, or None if none took it
        within TAKE_WITHIN seconds or answered within ``answer_within``."""
        nonce = secrets.token_hex(8)
        answered = self._waiting[nonce] = asyncio.get_running_loop().create_future()
        taken = self._taken[nonce] = asyncio.Event()
        try:
            question = json.dumps({"nonce": nonce, "kind": kind, "argument": argument})
            await self._off(self._bus.publish, ASK, question)
            async with asyncio.timeout(TAKE_WITHIN):
                await taken.wait()
            async with asyncio.timeout(answer_within):
                answer: str = await answered
                return answer
        except TimeoutError:
            return None
        finally:
            del self._waiting[nonce], self._taken[nonce]

    def _asked(self, payload: str) -> None:
        fields = _fields(payload, "nonce", "kind", "argument")
        if fields is None:
            log.warning("a question on the bus not understood")
            return
        nonce, kind, argument = fields
        handler = self._handlers.get(kind)
        if handler is None or nonce in self._waiting:
            return  # none of ours, or our own question
        task = asyncio.create_task(self._reply(handler, nonce, argument))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reply(self, handler: Handler, nonce: str, argument: str) -> None:
        async def taken() -> None:
            await self._publish(TAKEN, {"nonce": nonce})

        try:
            answer = await handler(argument, taken)
        except Exception:
            log.exception("answering a question failed")
            return
        if answer is not None:
            await self._publish(ANSWER, {"nonce": nonce, "answer": answer})

    async def _publish(self, topic: str, message: dict[str, str]) -> None:
        try:
            await self._off(self._bus.publish, topic, json.dumps(message))
        except (StoreError, ValueError) as exc:
            log.error("%s not sent: %s", topic, exc)

    def _was_taken(self, payload: str) -> None:
        fields = _fields(payload, "nonce")
        taken = self._taken.get(fields[0]) if fields is not None else None
        if taken is not None:
            taken.set()

    def _answered(self, payload: str) -> None:
        fields = _fields(payload, "nonce", "answer")
        if fields is None:
            return
        waiting = self._waiting.get(fields[0])
        if waiting is not None and not waiting.done():
            waiting.set_result(fields[1])

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
