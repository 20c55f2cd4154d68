"""When a rollout must stop, and how it ended: the --max-fail budget and the end state.

--max-fail has one meaning: a budget for the whole rollout. Its failed and unreachable
hosts, as a share of all the rollout's hosts, may reach the percentage but not pass
it. The budget is checked at every wave: a wave that would certainly pass it (hosts
with no known address cannot be reached) does not start, and a wave after which it is
passed halts the rollout. Small early waves therefore do not halt on one failure that
the whole rollout can afford.

Pure: counts and options in, values out; the engine does the I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from inventory.rollouts import HostOutcome, RolloutState


@dataclass(frozen=True, slots=True)
class FailBudget:
    """How many of a rollout's hosts may fail or be unreachable, and how many have."""

    max_fail: float
    total: int
    allowed: int
    used: int

    @property
    def left(self) -> int:
        """Hosts that may still fail before the rollout halts (0 once passed)."""
        return max(0, self.allowed - self.used)

    @property
    def exceeded(self) -> bool:
        return self.used > self.allowed

    def text(self) -> str:
        """``1 of 2 left (40% of 5 hosts; 1 failed or unreachable)``."""
        return (
            f"{self.left} of {self.allowed} left ({self.max_fail:g}% of {self.total} hosts; "
            f"{self.used} failed or unreachable)"
        )


def fail_budget(max_fail: float, counts: Mapping[HostOutcome, int]) -> FailBudget:
    """The budget of a rollout whose hosts are ``counts`` (every host, by outcome)."""
    total = sum(counts.values())
    # In decimal: 5% of 60 hosts is 3 exactly, where floats may make it 2.9999...
    allowed = math.floor(Decimal(repr(max_fail)) * total / 100)
    used = sum(n for outcome, n in counts.items() if outcome.bad)
    return FailBudget(max_fail, total, allowed, used)


def halt_before_wave(budget: FailBudget, wave: int, certain_bad: int) -> str:
    """Why wave ``wave`` must not start ("" if it may): ``certain_bad`` of its hosts
    cannot be reached whatever happens, and with them the budget would be passed."""
    if budget.used + certain_bad <= budget.allowed:
        return ""
    return (
        f"wave {wave} not started: {certain_bad} of its hosts have no known address, "
        f"which makes {budget.used + certain_bad} of {budget.total} hosts failed or "
        f"unreachable, over the --max-fail budget of {budget.allowed} ({budget.max_fail:g}%)"
    )


def halt_after_wave(budget: FailBudget, wave: int) -> str:
    """Why the rollout halts after wave ``wave`` ("" if it goes on)."""
    if not budget.exceeded:
        return ""
    return (
        f"wave {wave}: {budget.used} of {budget.total} hosts failed or unreachable, over "
        f"the --max-fail budget of {budget.allowed} ({budget.max_fail:g}%)"
    )


def end_state(
    counts: Mapping[HostOutcome, int], offline_skipped: int, waves: int
) -> tuple[RolloutState, str]:
    """How a rollout whose every host had its turn ended, and the reason shown.

    ``done-unreached`` when some hosts were not reached: unreachable ones, and devices
    offline at the start that were left out. They do not have the change, so a script
    must not read the end as success (``schoolctl rollout status`` exits non-zero)."""
    summary = ", ".join(f"{n} {o.value}" for o, n in counts.items() if n) or "no hosts"
    unreachable = counts.get(HostOutcome.UNREACHABLE, 0)
    not_reached = unreachable + offline_skipped
    within = " (within the --max-fail budget)" if counts.get(HostOutcome.FAILED, 0) else ""
    if not not_reached:
        return RolloutState.DONE, f"every host done in {waves} wave(s): {summary}{within}"
    why = [f"{unreachable} unreachable"] if unreachable else []
    why += [f"{offline_skipped} offline at the start"] if offline_skipped else []
    return (
        RolloutState.DONE_UNREACHED,
        f"done, {not_reached} host(s) not reached ({', '.join(why)}); "
        f"{waves} wave(s): {summary}{within}",
    )
