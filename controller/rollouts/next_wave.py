"""What a running rollout does next: a wave of these hosts, a wait, or its end; and
whether its lesson gate has closed. Reads the store and the registry, decides with
the school day's and the verdict's pure rules (inventory/), writes nothing."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

from controller.offload import Offload
from controller.rollouts.engine_settings import EngineSettings
from controller.rollouts.store import RolloutStore
from inventory.model import DeviceRecord
from inventory.rollout_verdict import end_state
from inventory.rollouts import (
    HostOutcome,
    HostResult,
    LessonRates,
    RolloutRecord,
    RolloutState,
    gate_closed,
    wave_size,
)
from inventory.school_day import Candidate, Window, parse_window, pick_wave

DevicesById = Callable[[Collection[str], float], list[DeviceRecord]]


@dataclass(frozen=True, slots=True)
class Next:
    """A wave of ``hosts`` (with the registry's ``devices``), else a wait of ``wait``
    seconds, else (``ended`` set) the rollout's end and its reason."""

    hosts: tuple[HostResult, ...] = ()
    devices: dict[str, DeviceRecord] = field(default_factory=dict)
    wait: float = 0.0
    # Why pending hosts wait, when it changed since the record was read.
    waiting: str | None = None
    ended: RolloutState | None = None
    reason: str = ""


class NextWave:
    """Chooses a running rollout's next step from the store."""

    def __init__(
        self,
        store: RolloutStore,
        devices_by_id: DevicesById,
        off: Offload,
        settings: EngineSettings,
        forks: int,
        now: Callable[[], float],
    ) -> None:
        self._store = store
        self._devices_by_id = devices_by_id
        self._off = off
        self._settings = settings
        self._forks = max(1, forks)
        self._now = now

    async def choose(self, record: RolloutRecord) -> Next:
        """The next wave's hosts: canary first, then doubling up to --wave-size, only
        hosts free of lessons and inside their school's maintenance windows."""
        rid = record.rollout_id
        pending = await self._off(self._store.rollout_hosts, rid, frozenset({HostOutcome.PENDING}))
        if not pending:
            state, reason = end_state(
                record.counts, len(record.spec.offline_skipped), len(record.waves)
            )
            return Next(ended=state, reason=reason)
        size = wave_size(record.spec, record.total, len(record.waves))
        devices = await self._devices(pending)
        duration = self._expected(record, size)
        now = self._now()
        candidates = [
            Candidate(h.device_id, h.school_id, _room(devices.get(h.device_id))) for h in pending
        ]
        rooms = {(c.school_id, c.room_id) for c in candidates if c.room_id}
        busy = await self._off(self._store.busy_rooms, rooms, now, now + duration)
        windows = await self._windows({h.school_id for h in pending})
        pick = pick_wave(candidates, size, busy, windows, now, duration, self._settings.zone)
        waiting = pick.waiting if pick.waiting != record.waiting else None
        if not pick.chosen:
            wait = self._settings.recheck
            if pick.retry_at is not None:
                wait = min(wait, max(1.0, pick.retry_at - now))
            return Next(wait=wait, waiting=waiting)
        by_id = {h.device_id: h for h in pending}
        return Next(hosts=tuple(by_id[d] for d in pick.chosen), devices=devices, waiting=waiting)

    async def gate(self, record: RolloutRecord) -> str:
        """--gate lessons: why the rollout halts, if lessons on changed hosts fail more
        than before; else empty."""
        rid = record.rollout_id
        changed = await self._off(
            self._store.rollout_hosts, rid, frozenset({HostOutcome.OK, HostOutcome.CHANGED})
        )
        first = min((w.started_at for w in record.waves), default=self._now())
        until = self._now() - self._settings.lesson_on_time
        ids = [h.device_id for h in changed]
        after: LessonRates = await self._off(self._store.lesson_rates, ids, first, until)
        if not gate_closed(record.baseline, after):
            return ""
        return (
            f"lesson gate: {after.failed} of {after.tried} lesson launches failed on changed "
            f"devices ({after.rate:.0%}), against {record.baseline.rate:.0%} before"
        )

    def _expected(self, record: RolloutRecord, size: int) -> float:
        """How long a wave of ``size`` hosts should take: batches of ``forks`` hosts, each
        as long as the last wave's batches took (or the configured estimate)."""
        per_batch = self._settings.batch_estimate
        done = [w for w in record.waves if w.finished_at is not None and w.hosts]
        if done:
            last = done[-1]
            assert last.finished_at is not None
            per_batch = (last.finished_at - last.started_at) / math.ceil(last.hosts / self._forks)
        return max(60.0, per_batch * math.ceil(size / self._forks))

    async def _devices(self, hosts: Iterable[HostResult]) -> dict[str, DeviceRecord]:
        """The registry's records of these hosts."""
        ids = [h.device_id for h in hosts]
        found = await self._off(self._devices_by_id, ids, self._now())
        return {d.identity.device_id: d for d in found}

    async def _windows(self, schools: set[str]) -> dict[str, list[Window]]:
        stored = await self._off(self._store.windows, schools)
        return {school: [parse_window(w) for w in texts] for school, texts in stored.items()}


def _room(device: DeviceRecord | None) -> str:
    return device.identity.room_id if device is not None else ""
