"""The --max-fail budget of a whole rollout, checked at every wave, and how a rollout
whose every host had its turn ends."""

from __future__ import annotations

from collections import Counter
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from inventory.rollout_verdict import (
    end_state,
    fail_budget,
    halt_after_wave,
    halt_before_wave,
)
from inventory.rollouts import HostOutcome, RolloutState


def counts(**by_outcome: int) -> dict[HostOutcome, int]:
    found = dict.fromkeys(HostOutcome, 0)
    found.update({HostOutcome(k): n for k, n in by_outcome.items()})
    return found


def test_the_budget_is_a_share_of_all_the_rollouts_hosts() -> None:
    # 5% of 60 hosts: 3 may fail or be unreachable; the 4th halts.
    budget = fail_budget(5.0, counts(ok=55, failed=2, unreachable=1, pending=2))
    assert (budget.allowed, budget.used, budget.left, budget.exceeded) == (3, 3, 0, False)
    assert halt_after_wave(budget, 4) == ""
    over = fail_budget(5.0, counts(ok=55, failed=3, unreachable=1, pending=1))
    assert over.exceeded and over.left == 0
    assert halt_after_wave(over, 5) == (
        "wave 5: 4 of 60 hosts failed or unreachable, over the --max-fail budget of 3 (5%)"
    )
    # 8.8% of 375 is 33 exactly (floats would make it 33.0000...1 or 32.999...).
    assert fail_budget(8.8, counts(pending=375)).allowed == 33
    assert fail_budget(0.0, counts(pending=10)).allowed == 0
    assert fail_budget(100.0, counts(failed=10)).exceeded is False


def test_one_failure_in_a_small_early_wave_does_not_halt_a_large_rollout() -> None:
    # Canary of 1 fails: per wave that was 100% > 5%; of 100 hosts it is 1 of 5 allowed.
    budget = fail_budget(5.0, counts(failed=1, pending=99))
    assert halt_after_wave(budget, 1) == ""
    assert budget.text() == "4 of 5 left (5% of 100 hosts; 1 failed or unreachable)"


def test_cancelled_interrupted_pending_and_running_hosts_do_not_use_the_budget() -> None:
    budget = fail_budget(10.0, counts(cancelled=5, interrupted=3, pending=1, running=1, failed=1))
    assert (budget.allowed, budget.used) == (1, 1)
    assert not budget.exceeded


def test_a_wave_that_would_certainly_pass_the_budget_does_not_start() -> None:
    budget = fail_budget(10.0, counts(ok=10, failed=1, pending=9))  # 2 allowed, 1 used
    assert halt_before_wave(budget, 3, 1) == ""
    said = halt_before_wave(budget, 3, 2)
    assert said.startswith("wave 3 not started: 2 of its hosts have no known address")
    assert "3 of 20 hosts failed or unreachable, over the --max-fail budget of 2 (10%)" in said


@given(st.lists(st.sampled_from(HostOutcome), max_size=200), st.floats(0, 100))
def test_the_budget_is_passed_exactly_when_the_bad_share_is_above_max_fail(
    outcomes: list[HostOutcome], max_fail: float
) -> None:
    budget = fail_budget(max_fail, Counter(outcomes))
    bad = sum(o.bad for o in outcomes)
    assert budget.used == bad
    # Exactly, in fractions: the share in percent above the percentage as written.
    share_above = bool(outcomes) and Fraction(100 * bad, len(outcomes)) > Fraction(repr(max_fail))
    assert budget.exceeded == share_above
    assert 0 <= budget.left <= budget.allowed <= len(outcomes)


def test_a_rollout_that_reached_every_host_is_done() -> None:
    state, reason = end_state(counts(changed=3, ok=2), offline_skipped=0, waves=3)
    assert state is RolloutState.DONE
    assert reason == "every host done in 3 wave(s): 2 ok, 3 changed"
    state, reason = end_state(counts(changed=19, failed=1), 0, 5)
    assert state is RolloutState.DONE
    assert reason.endswith("1 failed (within the --max-fail budget)")


def test_a_rollout_with_hosts_not_reached_ends_in_its_own_state() -> None:
    state, reason = end_state(counts(changed=3, unreachable=1), offline_skipped=0, waves=2)
    assert state is RolloutState.DONE_UNREACHED and state.final
    assert reason.startswith("done, 1 host(s) not reached (1 unreachable); 2 wave(s)")
    # Devices offline at the start and left out are not reached either.
    state, reason = end_state(counts(changed=3), offline_skipped=2, waves=2)
    assert state is RolloutState.DONE_UNREACHED
    assert "2 host(s) not reached (2 offline at the start)" in reason
    state, reason = end_state(counts(ok=1, unreachable=1), offline_skipped=1, waves=1)
    assert "2 host(s) not reached (1 unreachable, 1 offline at the start)" in reason


def test_every_state_but_running_and_paused_is_final() -> None:
    assert {s for s in RolloutState if not s.final} == {RolloutState.RUNNING, RolloutState.PAUSED}
    assert not HostOutcome.INTERRUPTED.bad and HostOutcome.INTERRUPTED.settled
