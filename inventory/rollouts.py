"""Rollouts: which hosts a playbook goes to, in which waves, and when it must stop.

Pure values and rules; the controller's engine does the I/O (store, ansible-runner).
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from inventory.model import DeviceKind, valid_id


class RolloutState(enum.StrEnum):
    """Where a rollout is; all but running and paused are final."""

    RUNNING = "running"
    PAUSED = "paused"
    # Its failed and unreachable hosts passed the --max-fail budget, or the lesson
    # gate closed: stopped.
    HALTED = "halted"
    ABORTED = "aborted"
    # Every host had its turn and was reached.
    DONE = "done"
    # Every host had its turn, but some were not reached (unreachable, or offline at
    # the start and left out): they do not have the change.
    DONE_UNREACHED = "done-unreached"

    @property
    def final(self) -> bool:
        return self not in (RolloutState.RUNNING, RolloutState.PAUSED)


class HostOutcome(enum.StrEnum):
    """What happened to one host; pending and running are not outcomes yet."""

    PENDING = "pending"
    RUNNING = "running"
    OK = "ok"
    CHANGED = "changed"
    FAILED = "failed"
    UNREACHABLE = "unreachable"
    # The rollout ended (abort, halt) before the playbook reached the host: unchanged.
    CANCELLED = "cancelled"
    # An abort stopped the playbook while it ran on the host: it may be half changed.
    INTERRUPTED = "interrupted"

    @property
    def bad(self) -> bool:
        return self in (HostOutcome.FAILED, HostOutcome.UNREACHABLE)

    @property
    def settled(self) -> bool:
        return self not in (HostOutcome.PENDING, HostOutcome.RUNNING)


class RolloutInputError(ValueError):
    """A selector, amount or extra-vars value that cannot be used; the message names it."""


_SELECTOR_KEYS = ("school", "room", "kind", "os", "device")
_LABEL = re.compile(r"label\.([A-Za-z0-9][A-Za-z0-9._-]{0,63})")


@dataclass(frozen=True, slots=True)
class Selector:
    """Which devices a rollout is for: every given key must match (values of one key are
    alternatives, written ``school=1|2``); an empty selector is refused."""

    schools: frozenset[str] = frozenset()
    rooms: frozenset[str] = frozenset()
    kinds: frozenset[DeviceKind] = frozenset()
    os_versions: frozenset[str] = frozenset()
    devices: frozenset[str] = frozenset()
    labels: tuple[tuple[str, frozenset[str]], ...] = ()

    def matches(
        self,
        *,
        device_id: str,
        school_id: str,
        room_id: str,
        kind: DeviceKind,
        os_version: str | None,
        labels: Mapping[str, str],
    ) -> bool:
        return (
            (not self.schools or school_id in self.schools)
            and (not self.rooms or room_id in self.rooms)
            and (not self.kinds or kind in self.kinds)
            and (not self.os_versions or (os_version or "") in self.os_versions)
            and (not self.devices or device_id in self.devices)
            and all(labels.get(name) in values for name, values in self.labels)
        )


def parse_selector(text: str) -> Selector:
    """``school=1234,kind=panel|laptop,label.grade=5`` -> Selector."""
    found: dict[str, set[str]] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        values = {v.strip() for v in value.split("|") if v.strip()}
        if not sep or not values:
            raise RolloutInputError(f"selector part {part!r}: write key=value")
        if key not in _SELECTOR_KEYS and not _LABEL.fullmatch(key):
            keys = ", ".join(_SELECTOR_KEYS)
            raise RolloutInputError(f"selector key {key!r}: use one of {keys} or label.NAME")
        if key == "kind":
            wrong = values - {k.value for k in DeviceKind}
            if wrong:
                kinds = ", ".join(k.value for k in DeviceKind)
                raise RolloutInputError(f"selector kind {sorted(wrong)[0]!r}: use {kinds}")
        elif key in ("school", "room", "device"):
            wrong = {v for v in values if not valid_id(v)}
            if wrong:
                raise RolloutInputError(f"selector {key} {sorted(wrong)[0]!r} is not a valid id")
        found.setdefault(key, set()).update(values)
    if not found:
        raise RolloutInputError("the selector is empty: say which devices, e.g. school=1234")
    labels = tuple(
        sorted((k.removeprefix("label."), frozenset(v)) for k, v in found.items() if "." in k)
    )
    return Selector(
        schools=frozenset(found.get("school", ())),
        rooms=frozenset(found.get("room", ())),
        kinds=frozenset(DeviceKind(k) for k in found.get("kind", ())),
        os_versions=frozenset(found.get("os", ())),
        devices=frozenset(found.get("device", ())),
        labels=labels,
    )


@dataclass(frozen=True, slots=True)
class Amount:
    """A number of hosts, or a percentage of the rollout's hosts."""

    value: float
    percent: bool

    def of(self, total: int) -> int:
        """How many hosts out of ``total``: at least one (when there are any)."""
        count = int(self.value)
        if self.percent:
            # In decimal: 8.8% of 375 is 33 exactly, where floats make it 33.000...01.
            count = math.ceil(Decimal(repr(self.value)) * total / 100)
        return max(1, min(total, count)) if total else 0

    def __str__(self) -> str:
        return f"{self.value:g}%" if self.percent else f"{int(self.value)}"


def parse_amount(text: str, what: str) -> Amount:
    """``5`` (hosts) or ``2%`` (of the rollout's hosts)."""
    raw = text.strip()
    number = raw.removesuffix("%")
    try:
        value = float(number) if raw.endswith("%") else int(number)
    except ValueError:
        raise RolloutInputError(
            f"{what} {text!r}: write a number of hosts or a percentage"
        ) from None
    if raw.endswith("%") and not 0 < value <= 100:
        raise RolloutInputError(f"{what} {text!r}: a percentage must be above 0 and at most 100")
    if not raw.endswith("%") and value < 1:
        raise RolloutInputError(f"{what} {text!r}: at least one host")
    return Amount(value, raw.endswith("%"))


def parse_percent(text: str, what: str) -> float:
    """``5%`` or ``5`` -> 5.0, in [0, 100]."""
    raw = text.strip().removesuffix("%")
    try:
        value = float(raw)
    except ValueError:
        raise RolloutInputError(f"{what} {text!r}: write a percentage, e.g. 5%") from None
    if not 0 <= value <= 100:
        raise RolloutInputError(f"{what} {text!r}: a percentage from 0 to 100")
    return value


# Ansible's strategies a rollout may run with: Mitogen for Ansible's mitogen_linear (one
# Python per host kept across its tasks) or Ansible's own linear.
STRATEGIES = ("mitogen", "linear")


@dataclass(frozen=True, slots=True)
class RolloutSpec:
    """What was asked for: ``schoolctl rollout start`` and its options."""

    playbook: str
    selector: str
    canary: Amount = Amount(1, False)
    wave_size: Amount = Amount(10, True)
    # A budget for the whole rollout: the share (percent) of its hosts that may fail
    # or be unreachable; more halts it (inventory/rollout_verdict.py).
    max_fail: float = 5.0
    extra_vars: Mapping[str, object] = field(default_factory=dict)
    gate_lessons: bool = False
    # Devices offline at the start are left out (listed in offline_skipped: not
    # reached) unless this is set; they get the change from a later rollout.
    include_offline: bool = False
    offline_skipped: tuple[str, ...] = ()
    # Ansible's strategy for every wave ("mitogen" or "linear"), fixed at the start:
    # the controller's rollout_strategy unless the rollout asked for another.
    strategy: str = ""


def wave_size(spec: RolloutSpec, total: int, waves_started: int) -> int:
    """How many hosts the next wave takes: the canary first, then twice the previous
    wave each time, never more than --wave-size (nor fewer than the canary)."""
    canary = spec.canary.of(total)
    if waves_started == 0:
        return canary
    cap = max(canary, spec.wave_size.of(total))
    # 2**n is typed Any (a negative n gives a float); a shift doubles exactly.
    return min(cap, canary << waves_started)


@dataclass(frozen=True, slots=True)
class LessonRates:
    """Lesson launches on some devices in some period: how many were tried, how many
    failed."""

    tried: int
    failed: int

    @property
    def rate(self) -> float:
        return self.failed / self.tried if self.tried else 0.0


# The lesson gate needs this many launches on changed devices before it judges.
GATE_MIN_TRIED = 3


def gate_closed(before: LessonRates, after: LessonRates) -> bool:
    """--gate lessons: lessons on changed devices fail to launch more often than on the
    same devices before the rollout began."""
    return after.tried >= GATE_MIN_TRIED and after.failed > 0 and after.rate > before.rate


@dataclass(frozen=True, slots=True)
class HostResult:
    """One host of a rollout: its wave (None before its turn) and its outcome."""

    device_id: str
    school_id: str
    wave: int | None
    outcome: HostOutcome
    # The failing task and its message (failed, unreachable); empty otherwise.
    task: str = ""
    message: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    # The failing task's return code and the ends of its stdout and stderr (bounded,
    # control characters escaped: inventory/host_output.py).
    rc: int | None = None
    stdout: str = ""
    stderr: str = ""
    # The host's whole result as JSON (its tasks, the failing task's result), bounded;
    # only read for one host (rollout status --host), never in lists.
    detail: str = ""


@dataclass(frozen=True, slots=True)
class WaveRecord:
    """One wave: when it ran, on how many hosts, and what it did."""

    wave: int
    hosts: int
    started_at: float
    finished_at: float | None
    failed: int = 0


@dataclass(frozen=True, slots=True)
class RolloutRecord:
    """A rollout as the store knows it."""

    rollout_id: int
    spec: RolloutSpec
    state: RolloutState
    reason: str
    created_by: str
    created_at: float
    updated_at: float
    finished_at: float | None
    # Hosts by outcome (every outcome present, zero where none).
    counts: Mapping[HostOutcome, int]
    waves: tuple[WaveRecord, ...] = ()
    # Lesson launches on the selected devices in the week before the rollout began.
    baseline: LessonRates = LessonRates(0, 0)
    # Why pending hosts are not in a wave yet (lessons, maintenance windows), if so.
    waiting: str = ""

    @property
    def total(self) -> int:
        return sum(self.counts.values())
