"""The budget of refused attempts per source, and their folding: values and ``now`` only."""

from __future__ import annotations

import pytest

from controller.people.attempt_limits import FailureBudget, Folded, Folds, source_of


@pytest.mark.parametrize(
    ("peer", "source"),
    [
        ("ipv4:127.0.0.1:5555", "127.0.0.1"),
        ("ipv4:198.18.0.7:1", "198.18.0.7"),
        ("ipv6:%5B::1%5D:48426", "::1"),
        ("ipv6:[2001:db8:1:2::9]:443", "2001:db8:1:2::/64"),
        ("ipv6:%5B2001:db8:1:2:aaaa:bbbb:cccc:dddd%5D:443", "2001:db8:1:2::/64"),
        ("ipv6:[::ffff:198.18.0.9]:80", "198.18.0.9"),
        ("unix:/run/x.sock", "unix"),
        ("ipv4:not-an-address:1", "ipv4"),
        ("", "unknown"),
    ],
)
def test_a_source_is_the_address_without_its_port(peer: str, source: str) -> None:
    assert source_of(peer) == source


def test_a_source_may_fail_its_burst_then_waits_for_the_refill() -> None:
    budget = FailureBudget(per_minute=10, burst=10)
    for _ in range(10):
        assert budget.wait("a", 0) == 0
        budget.refused("a", 0)
    assert budget.wait("a", 0) == pytest.approx(6.0)
    # Another source is not affected.
    assert budget.wait("b", 0) == 0
    # One token back after 6 s, and one failure takes it again.
    assert budget.wait("a", 6) == 0
    budget.refused("a", 6)
    assert budget.wait("a", 7) == pytest.approx(5.0)
    # Never more than the burst, however long it was quiet.
    for _ in range(10):
        budget.refused("a", 10_000)
    assert budget.wait("a", 10_000) > 0


def test_many_sources_cost_bounded_memory() -> None:
    budget, folds = FailureBudget(max_sources=1000), Folds(max_sources=1000)
    for n in range(50_000):
        budget.refused(f"s{n}", n / 1000)
        folds.add(f"s{n}", "enroll", "no", n / 1000)
    assert len(budget) == 1000 and len(folds) == 1000


def test_a_flood_is_one_entry_per_source_and_minute() -> None:
    folds = Folds(window=60)
    # The first attempt of a quiet source is recorded on its own; the rest are counted.
    assert folds.add("a", "enroll", "bad token", 0) is True
    assert [folds.add("a", "enroll", f"bad {n}", n / 10) for n in range(1, 37)] == [False] * 36
    assert folds.add("b", "sign-in", "no token", 1) is True
    assert folds.due(59) == []
    assert folds.due(60) == [Folded("a", "enroll", 36, 0, "bad 36")]
    # Still flooding: the next minute is folded from its first attempt on.
    assert folds.add("a", "enroll", "again", 61) is False
    assert folds.due(121) == [Folded("a", "enroll", 1, 60, "again")]
    # Quiet for a whole window: forgotten, and its next attempt is recorded again.
    assert folds.due(190) == []
    assert len(folds) == 0
    assert folds.add("a", "enroll", "later", 200) is True


def test_what_is_folded_is_written_at_shutdown() -> None:
    folds = Folds(window=60)
    folds.add("a", "enroll", "x", 0)
    folds.add("a", "enroll", "y", 1)
    assert folds.due(2) == []
    assert folds.due(2, everything=True) == [Folded("a", "enroll", 1, 0, "y")]
