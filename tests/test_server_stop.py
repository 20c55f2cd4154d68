"""A step of the controller's stop that does not end is left behind, and says where
everything still running waits; one that fails fails the stop as before."""

from __future__ import annotations

import asyncio
import time

import pytest

from controller.server import _within


async def _forever() -> None:
    await asyncio.Event().wait()


def test_a_step_that_never_ends_is_left_behind_and_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> float:
        stuck = asyncio.create_task(_forever(), name="stuck-loop")
        began = time.monotonic()
        await _within("the leased work", stuck, seconds=0.3)
        took = time.monotonic() - began
        stuck.cancel()
        return took

    with caplog.at_level("ERROR", logger="controller.server"):
        took = asyncio.run(scenario())
    assert 0.25 < took < 2
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("controller stop: the leased work did not end within 0.3 s;")
    assert "stuck-loop@" in line and "test_server_stop.py" in line


def test_a_step_that_ends_or_fails_is_as_it_was() -> None:
    async def ends() -> None:
        await asyncio.sleep(0.01)

    async def fails() -> None:
        raise RuntimeError("the store is gone")

    asyncio.run(_within("a quick step", ends(), seconds=5))
    with pytest.raises(RuntimeError, match="the store is gone"):
        asyncio.run(_within("a failing step", fails(), seconds=5))
