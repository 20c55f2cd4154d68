"""The controller's word on when to come back, and the agent's reconnect rule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.backoff import RESTART_ATTEMPTS, Reconnects
from common.retry_hint import (
    BUSY,
    REASON_KEY,
    RESTART,
    RETRY_AFTER_KEY,
    RetryHint,
    RetryWindow,
    ended_unsaid,
    read_hint,
    unsaid_restart,
)
from controller.fleet.admission import (
    OPENING_MAX,
    RESTART_ADMIT_PER_SECOND,
    WelcomeRate,
    busy_window,
    drain_window,
    restart_spread,
    restart_window,
)
from controller.server import grpc_options
from controller.settings import ControllerSettings


def _top(low: float, high: float) -> float:
    return high


def _restarting(reconnects: Reconnects) -> bool:
    # A call, so that mypy does not keep an earlier assert's narrowing of the property.
    return reconnects.restarting


def test_a_window_becomes_trailers_the_agent_reads() -> None:
    trailers = RetryWindow(RESTART, 2.0, 9.0).metadata(uniform=lambda low, high: 3.25)
    assert dict(trailers) == {REASON_KEY: "restart", RETRY_AFTER_KEY: "3250"}
    assert read_hint(trailers) == RetryHint(RESTART, 3.25)
    # As grpc hands trailers to the agent: bytes values, other entries beside them.
    assert read_hint([("x-other", "1"), (REASON_KEY, b"busy"), (RETRY_AFTER_KEY, b"800")]) == (
        RetryHint(BUSY, 0.8)
    )


@given(st.lists(st.tuples(st.sampled_from([REASON_KEY, RETRY_AFTER_KEY, "x"]), st.text())))
def test_no_trailer_makes_a_device_wait_longer_than_ten_minutes(
    trailers: list[tuple[str, str]],
) -> None:
    hint = read_hint(trailers)
    assert hint is None or (hint.reason in (RESTART, BUSY) and 0 <= hint.seconds <= 600)


def test_unreadable_hints_are_ignored() -> None:
    assert read_hint(None) is None
    assert read_hint([(REASON_KEY, "restart")]) is None
    assert read_hint([(REASON_KEY, "later"), (RETRY_AFTER_KEY, "100")]) is None
    assert read_hint([(REASON_KEY, "restart"), (RETRY_AFTER_KEY, "-5")]) is None
    assert read_hint([(REASON_KEY, "restart"), (RETRY_AFTER_KEY, "9" * 40)]) is None


def test_a_restart_spreads_a_big_fleet_at_the_rate_a_new_process_admits() -> None:
    small = restart_window(10)
    assert small.reason == RESTART and 0 < small.low < small.high
    big = restart_window(10_000)
    assert big.high - big.low == 10_000 / RESTART_ADMIT_PER_SECOND


def test_after_a_restart_hint_the_device_waits_the_hint_then_keeps_attempts_short() -> None:
    reconnects = Reconnects(1.0, 60.0, 5.0, 30.0, uniform=_top)
    # Attempts failed for a while: the plain backoff has grown.
    for _ in range(8):
        reconnects.delay(0.0, None)
    assert reconnects.delay(0.0, None) == 60.0
    # Then a stream that was up a long time ends with the controller's restart word.
    assert reconnects.delay(3600.0, RetryHint(RESTART, 4.2)) == 4.2
    assert reconnects.restarting
    # The new process is not up yet: RESTART_ATTEMPTS attempts that wait for it to
    # listen, short waits between them.
    delays = []
    for _ in range(RESTART_ATTEMPTS):
        assert reconnects.restarting
        delays.append(reconnects.delay(0.0, None))
    assert delays == [1.0, 2.0, 4.0, 8.0]
    # Not back by then: it is down, not restarting; plain backoff up to its cap.
    assert not _restarting(reconnects)
    assert max(reconnects.delay(0.0, None) for _ in range(5)) == 60.0


def test_a_restart_hint_is_over_once_a_stream_stays_up() -> None:
    reconnects = Reconnects(1.0, 60.0, 5.0, 30.0, uniform=_top)
    reconnects.delay(100.0, RetryHint(RESTART, 2.0))
    reconnects.delay(45.0, None)
    assert not reconnects.restarting


def test_an_end_the_device_could_not_read_is_taken_for_a_restart() -> None:
    reconnects = Reconnects(1.0, 60.0, 5.0, 30.0, uniform=_top)
    assert reconnects.delay(100.0, None, unread=True) == 1.0
    assert reconnects.restarting


def test_a_busy_hint_is_honoured_without_shortening_later_attempts() -> None:
    reconnects = Reconnects(1.0, 60.0, 5.0, 30.0, uniform=_top)
    assert reconnects.delay(0.0, RetryHint(BUSY, 7.5)) == 7.5
    assert not reconnects.restarting
    delays = [reconnects.delay(0.0, None) for _ in range(8)]
    assert max(delays) == 60.0


def test_without_a_hint_it_is_the_plain_backoff() -> None:
    reconnects = Reconnects(1.0, 60.0, 5.0, 30.0, uniform=_top)
    assert [reconnects.delay(0.0, None) for _ in range(4)] == [1.0, 2.0, 4.0, 8.0]
    assert reconnects.delay(31.0, None) == 1.0


def test_the_server_holds_a_whole_fleet_of_calls_rather_than_dropping_some() -> None:
    # Past max_pending_requests gRPC core drops calls the service never sees: the
    # devices got CANCELLED/INTERNAL before Welcome in every restart storm.
    settings = ControllerSettings(max_streams=20_000)
    options = dict(grpc_options(settings))
    assert options["grpc.server.max_pending_requests"] >= settings.max_streams
    assert options["grpc.server.max_pending_requests_hard_limit"] >= settings.max_streams


def test_a_storm_past_the_opening_limit_is_shed_until_the_crowd_ahead_is_taken() -> None:
    assert busy_window(1, 200.0) is None
    assert busy_window(OPENING_MAX, 200.0) is None
    # 1,500 ahead at 250 Welcomes a second: back in 6 s, spread over 2 s more.
    assert busy_window(1500, 250.0) == RetryWindow(BUSY, 6.0, 8.0)
    # A quarter of a long wait; never less than 1 s, never more than a minute.
    assert drain_window(4000, 100.0) == RetryWindow(BUSY, 40.0, 50.0)
    assert drain_window(10, 500.0) == RetryWindow(BUSY, 1.0, 3.0)
    assert drain_window(10**6, 100.0).low == 60.0
    # No Welcomes measured yet (just started, or stalled): assumed 50 a second.
    assert drain_window(1001, 0.0).low == 1001 / 50


def test_the_welcome_rate_is_what_the_last_five_seconds_took() -> None:
    rate = WelcomeRate()
    assert rate.per_second(100.0) == 0.0
    for n in range(1000):
        rate.welcomed(100.0 + n / 200)  # 200 a second for 5 s
    assert rate.per_second(104.999) == pytest.approx(200.0, rel=0.01)
    # A controller that has just started: over the time since its first Welcome.
    early = WelcomeRate()
    for n in range(100):
        early.welcomed(50.0 + n / 200)
    assert early.per_second(50.5) == pytest.approx(200.0, rel=0.01)
    # Those older than five seconds no longer count.
    assert rate.per_second(107.5) == pytest.approx(100.0, rel=0.01)  # 102.5-105: 500
    assert rate.per_second(200.0) == 0.0


def test_an_end_without_the_controllers_word_is_taken_for_a_restart_over_the_welcomes_spread() -> (
    None
):
    # The exit after a shutdown's grace, a crash, a lost connection; and grpc's masked end.
    assert ended_unsaid("UNAVAILABLE", "Stream removed (Socket closed)")
    assert ended_unsaid("INTERNAL", "Internal error from Core")
    assert not ended_unsaid("PERMISSION_DENIED", "certificate of another school")
    assert not ended_unsaid("INTERNAL", "stream read failed")
    # The Welcome names the spread for the fleet the controller knows; drawn from 1 s on.
    spread = restart_spread(10_000)
    assert spread == 10_000 / RESTART_ADMIT_PER_SECOND
    assert unsaid_restart(spread, uniform=_top) == RetryHint(RESTART, 1.0 + spread)
    assert unsaid_restart(spread, uniform=lambda low, high: low) == RetryHint(RESTART, 1.0)
    # A controller older than the field says 0: the agent's own backoff.
    assert unsaid_restart(0.0) is None
    # Never more than ten minutes, whatever a Welcome says.
    hint = unsaid_restart(4_000_000.0, uniform=_top)
    assert hint is not None and hint.seconds == 600.0
