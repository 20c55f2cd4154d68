"""Ack coalescing: at most one ack per device per interval, the last one never lost."""

from __future__ import annotations

from controller.fleet.acks import AckCoalescer


def test_first_ack_goes_at_once_later_ones_are_held_then_sent() -> None:
    acks = AckCoalescer(interval=1.0)
    assert acks.stored({"a": 1, "b": 4}, now=10.0) == {"a": 1, "b": 4}
    assert acks.stored({"a": 2}, now=10.2) == {}
    assert acks.stored({"a": 3}, now=10.4) == {}
    assert acks.due(now=10.9) == {}
    assert acks.due(now=11.0) == {"a": 3}  # the highest, once
    assert acks.due(now=12.5) == {}
    # Past the interval, a stored batch is acked at once, with anything held folded in.
    assert acks.stored({"b": 5}, now=11.5) == {"b": 5}


def test_a_device_sending_every_thirty_seconds_gets_every_ack_at_once() -> None:
    acks = AckCoalescer(interval=1.0)
    sent = [acks.stored({"p": seq}, now=30.0 * seq) for seq in range(1, 6)]
    assert sent == [{"p": seq} for seq in range(1, 6)]


def test_forget_starts_the_next_stream_afresh() -> None:
    acks = AckCoalescer(interval=1.0)
    acks.stored({"a": 1}, now=0.0)
    acks.stored({"a": 2}, now=0.1)
    acks.forget("a")
    assert acks.due(now=5.0) == {}
    assert acks.stored({"a": 3}, now=0.2) == {"a": 3}


def test_interval_zero_acks_every_batch_and_holds_nothing() -> None:
    acks = AckCoalescer(interval=0.0)
    assert acks.stored({"a": 1}, now=1.0) == {"a": 1}
    assert acks.stored({"a": 2}, now=1.0) == {"a": 2}
    assert acks.due(now=1.0) == {}
