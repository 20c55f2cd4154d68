"""The heartbeat writer: batches, acks the highest stored seq, flushes on close."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from controller.fleet.writer import MessageWriter, highest_seq
from controller.stores import Stores
from tests.test_store_sqlite import T0, beat, ident


def test_highest_seq_per_device() -> None:
    rows = [beat("a", 1, T0), beat("b", 7, T0), beat("a", 3, T0), beat("a", 2, T0)]
    assert highest_seq(rows) == {"a": 3, "b": 7}


def test_writes_in_batches_and_flushes_everything_on_close(both_stores: Stores) -> None:
    store = both_stores
    for d in ("a", "b"):
        store.devices.device_connected(ident(d), 1, 90, T0)
    acks: list[dict[str, int]] = []
    batches: list[int] = []

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            writer = MessageWriter(
                store.devices,
                pool,
                flush_interval=0.05,
                batch_max=50,
                queue_max=1000,
                on_stored=acks.append,
                on_flush=lambda n, _s: batches.append(n),
            )
            task = asyncio.create_task(writer.run())
            for seq in range(1, 121):
                await writer.submit(beat("a" if seq % 2 else "b", seq, T0 + seq))
            await writer.close()
            await asyncio.wait_for(task, 10)

    asyncio.run(scenario())
    assert sum(batches) == 120
    assert max(batches) <= 50
    assert len(batches) >= 3
    final: dict[str, int] = {}
    for ack in acks:
        final.update(ack)
    assert final == {"a": 119, "b": 120}
    a = store.devices.get_device("a", T0 + 120)
    assert a is not None and a.last_seq == 119
