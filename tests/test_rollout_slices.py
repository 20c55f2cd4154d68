"""A wave cut into slices, and when a controller claims one more: pure rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.rollouts.slices import cut, may_claim


@pytest.mark.parametrize(
    ("hosts", "size", "sizes"),
    [
        (23, 10, [8, 8, 7]),
        (20, 20, [20]),
        (21, 20, [11, 10]),
        (1, 20, [1]),
        (5, 1, [1, 1, 1, 1, 1]),
        (7, 0, [1] * 7),  # a size below 1 is taken as 1
        (0, 20, []),
    ],
)
def test_a_wave_is_cut_as_evenly_as_can_be(hosts: int, size: int, sizes: list[int]) -> None:
    ids = [f"panel-{n}" for n in range(hosts)]
    slices = cut(ids, size)
    assert [len(s) for s in slices] == sizes
    assert [d for s in slices for d in s] == ids, "every host once, in order"


@given(st.integers(1, 500), st.integers(1, 60))
def test_no_slice_is_over_the_size_or_two_apart(hosts: int, size: int) -> None:
    lengths = [len(s) for s in cut([str(n) for n in range(hosts)], size)]
    assert sum(lengths) == hosts and max(lengths) <= size
    assert max(lengths) - min(lengths) <= 1
    assert len(lengths) == -(-hosts // size), "no more slices than needed"


@pytest.mark.parametrize(
    ("running", "slots", "load", "cores", "claims"),
    [
        # The first slice whatever the load: a rollout goes on on a busy city.
        (0, 1, 0.0, 2, True),
        (0, 1, 40.0, 2, True),
        (0, 0, 0.0, 2, False),  # no slot at all: this controller runs no slices
        # More only up to the slots, and while a core is spare.
        (1, 1, 0.0, 2, False),
        (1, 2, 1.0, 2, True),
        (1, 2, 1.01, 2, False),
        (2, 3, 6.9, 8, True),
        (3, 3, 0.0, 8, False),
        (1, 4, 0.5, 1, False),  # one core: never a spare one beside a slice
    ],
)
def test_when_a_controller_claims_another_slice(
    running: int, slots: int, load: float, cores: int, claims: bool
) -> None:
    assert may_claim(running, slots, load, cores) is claims
