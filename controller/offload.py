"""How the controller runs, and the one way its coroutines call blocking code.

- One asyncio event loop runs every gRPC handler (the device streams, the admin API)
  and every background loop (the writer, acks, the lesson dispatcher, the rollout
  engine, probes, uplink checks, the pki watch). Nothing on it blocks.
- Blocking work runs on named thread pools, each through an ``Offload``:
  ``store`` (4 threads): the store calls of the admin API and of the background loops,
  reads and writes; ``ingest-writer`` (1 thread): the heartbeat writer's batches, so
  that ingest never queues behind admin calls; ``probe`` (probe_concurrency threads):
  SSH probes, which block for seconds; ``rollout-slice`` (rollout_slots): waiting on
  a wave's slice in its worker process. Stream openings and certificate signing use
  asyncio's default pool (``asyncio.to_thread``), so that an 08:00 storm of streams
  does not queue behind admin calls either.
- The store has one write connection behind a lock (controller/store/database.py):
  a write from any of these threads waits for the lock. It is a lock, not a single
  writer thread; the ingest writer's thread is what keeps heartbeats in large batches.
- Every component gets what it needs when it is made (controller/server.py assembles
  them in order); nothing is wired into an object after it is built.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TypeVar

T = TypeVar("T")


class Offload:
    """Runs a blocking call on its pool and awaits it: ``await off(fn, *args)``."""

    def __init__(self, executor: Executor | None) -> None:
        # None: asyncio's default pool.
        self._executor = executor

    async def __call__(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
