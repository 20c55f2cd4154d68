"""A rollout wave's hosts in slices, each run by whichever controller has room.

The controller driving a rollout (controller/rollouts/driving.py) chooses a wave and
cuts it into slices in the store. Every controller sharing the store runs a slice
runner (controller/rollouts/slice_runner.py): while it has a free slot and spare
cores it claims the next unfinished slice, runs it through ansible-runner and stores
its hosts' results; the driver closes the wave once every slice is finished and
judges it (failures and halts from the store's counts, whichever controller stored
them). So a city rollout's wave runs on every controller's cores at once.

A claim is a lease on one slice: taken with an epoch one higher than the last, renewed
while the slice runs, and good until a time by the database's clock. A claimer that
dies leaves its claim to expire, and another controller claims the slice again and
runs it (the playbooks are idempotent). A claimer that lost its claim (it stalled
past the expiry and another took the slice) learns so when it next renews, stops its
run, and its results are refused by epoch: a slice's results are stored once.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from inventory.rollouts import HostResult

# The slices' size when none is set (ControllerSettings.rollout_slice_hosts).
SLICE_HOSTS = 20


@dataclass(frozen=True, slots=True)
class SliceClaim:
    """A slice this controller claimed: its hosts (device id, school id) and the epoch
    of the claim."""

    rollout_id: int
    wave: int
    slice: int
    holder: str
    epoch: int
    hosts: tuple[tuple[str, str], ...]


class Renewal(enum.Enum):
    """What renewing a claim found."""

    # Still this controller's: run on.
    HELD = "held"
    # Another controller claimed the slice (this claim expired): stop, store nothing.
    LOST = "lost"
    # The rollout ended (an abort, a halt): stop, and store what the run did.
    ENDED = "ended"


class SliceStore(Protocol):
    """The slices of rollout waves in the store (the waves are cut by
    RolloutStore.start_wave)."""

    def claim_slice(self, holder: str, ttl: float) -> SliceClaim | None:
        """Claims the first unfinished slice, of a running or paused rollout, that no
        live claim holds, for ``ttl`` seconds by the database's clock; None if there is
        none. Of controllers claiming at once, each gets a different slice."""

    def renew_slice(self, claim: SliceClaim, ttl: float) -> Renewal:
        """Extends the claim by ``ttl`` seconds from now if it is still this one."""

    def release_slice(self, claim: SliceClaim) -> bool:
        """Gives the claim up at once (another controller may claim the slice now)."""

    def finish_slice(self, claim: SliceClaim, results: Sequence[HostResult], now: float) -> bool:
        """Stores the slice's hosts' results and finishes it, if the claim is still
        this one (even after the rollout ended: what the playbook did is what it did);
        False, storing nothing, if another controller has claimed it since."""

    def unfinished_slices(self, rollout_id: int, wave: int) -> int:
        """The wave's slices not finished yet."""

    def running_slices(self, rollout_id: int) -> int:
        """The rollout's unfinished slices under a live claim: runs still to stop."""

    def forget_slice_claims(self) -> int:
        """Ends every claim at once (a controller alone on its store, at start-up: no
        claimer from before survives a restart); how many."""


def cut(device_ids: Sequence[str], size: int) -> list[list[str]]:
    """The wave's hosts in slices of at most ``size``, as even as can be: 23 hosts
    in slices of 10 are 8, 8 and 7."""
    if not device_ids:
        return []
    count = math.ceil(len(device_ids) / max(1, size))
    base, extra = divmod(len(device_ids), count)
    slices, start = [], 0
    for n in range(count):
        end = start + base + (1 if n < extra else 0)
        slices.append(list(device_ids[start:end]))
        start = end
    return slices


def may_claim(running: int, slots: int, load: float, cores: int) -> bool:
    """Whether a controller running ``running`` slices claims another: its first one
    always (a rollout must go on however busy every controller is), more up to
    ``slots`` only while a core is spare (the 1-minute load average leaves one)."""
    if running == 0:
        return slots > 0
    return running < slots and load <= cores - 1
