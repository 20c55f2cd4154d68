"""The rollout rules: selectors, amounts, wave sizes and the lesson gate (the --max-fail
budget and end states: test_rollout_verdict.py)."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inventory.model import DeviceKind
from inventory.rollouts import (
    GATE_MIN_TRIED,
    Amount,
    LessonRates,
    RolloutInputError,
    RolloutSpec,
    Selector,
    gate_closed,
    parse_amount,
    parse_percent,
    parse_selector,
    wave_size,
)

ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,20}", fullmatch=True)
id_sets = st.frozensets(ids, max_size=3)
label_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,10}", fullmatch=True)
label_values = st.from_regex(r"[A-Za-z0-9_.-]{1,8}", fullmatch=True)


@st.composite
def selectors(draw: st.DrawFn) -> Selector:
    labels = draw(st.dictionaries(label_names, st.frozensets(label_values, min_size=1, max_size=2)))
    selector = Selector(
        schools=draw(id_sets),
        rooms=draw(id_sets),
        kinds=draw(st.frozensets(st.sampled_from(DeviceKind))),
        os_versions=draw(st.frozensets(label_values, max_size=2)),
        devices=draw(id_sets),
        labels=tuple(sorted(labels.items())),
    )
    if selector == Selector():
        return Selector(schools=frozenset({"1234"}))
    return selector


def written(s: Selector) -> str:
    """The selector as a person would write it, one key=a|b part per key."""
    parts = [
        (key, values)
        for key, values in (
            ("school", s.schools),
            ("room", s.rooms),
            ("kind", {k.value for k in s.kinds}),
            ("os", s.os_versions),
            ("device", s.devices),
            *((f"label.{name}", values) for name, values in s.labels),
        )
        if values
    ]
    return ", ".join(f"{key}={'|'.join(sorted(values))}" for key, values in parts)


@given(selectors())
def test_a_written_selector_parses_back(selector: Selector) -> None:
    assert parse_selector(written(selector)) == selector


def test_a_key_given_twice_adds_alternatives() -> None:
    selector = parse_selector("school=1,kind=panel, school=2|3 ,label.grade=5,,")
    assert selector.schools == {"1", "2", "3"}
    assert selector.kinds == {DeviceKind.PANEL}
    assert selector.labels == (("grade", frozenset({"5"})),)
    assert selector.matches(
        device_id="d",
        school_id="2",
        room_id="r",
        kind=DeviceKind.PANEL,
        os_version=None,
        labels={"grade": "5"},
    )
    assert not selector.matches(
        device_id="d",
        school_id="2",
        room_id="r",
        kind=DeviceKind.PANEL,
        os_version=None,
        labels={},
    )


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("school", "'school'"),
        ("school=", "'school='"),
        ("school=|", "'school=|'"),
        ("town=5", "'town'"),
        ("label.=5", "'label.'"),
        ("label.-x=5", "'label.-x'"),
        ("kind=panel|phone", "'phone'"),
        ("school=a b", "'a b'"),
        ("room=-r1", "'-r1'"),
        ("device=" + "d" * 65, "'" + "d" * 65 + "'"),
    ],
)
def test_a_bad_selector_part_is_named(text: str, named: str) -> None:
    with pytest.raises(RolloutInputError, match="selector") as refused:
        parse_selector(text)
    assert named in str(refused.value)


@pytest.mark.parametrize("text", ["", " ", ",", " , ,"])
def test_an_empty_selector_is_refused(text: str) -> None:
    with pytest.raises(RolloutInputError, match="selector is empty"):
        parse_selector(text)


@given(st.integers(1, 10**6), st.integers(0, 10**6))
def test_a_number_of_hosts_is_at_least_one_and_at_most_all(hosts: int, total: int) -> None:
    expected = max(1, min(hosts, total)) if total else 0
    assert Amount(hosts, percent=False).of(total) == expected


# Percentages as people write them: up to two decimals.
hundredths = st.integers(1, 10_000)


@given(hundredths, st.integers(0, 10**6))
def test_a_percentage_rounds_up_to_at_least_one_host(p: int, total: int) -> None:
    amount = parse_amount(f"{p / 100}%", "wave size")
    exact = Fraction(p, 100) * total / 100
    expected = max(1, math.ceil(exact)) if total else 0
    assert amount.of(total) == expected
    assert amount.of(total) <= total


def test_percentage_edges() -> None:
    assert Amount(10, percent=True).of(0) == 0
    assert Amount(0.01, percent=True).of(3) == 1
    assert Amount(100, percent=True).of(7) == 7
    assert Amount(8.8, percent=True).of(375) == 33, "8.8% of 375 is exactly 33"
    assert Amount(50, percent=True).of(3) == 2


@pytest.mark.parametrize(
    ("text", "amount"),
    [("5", Amount(5, False)), (" 2% ", Amount(2, True)), ("0.5%", Amount(0.5, True))],
)
def test_parse_amount(text: str, amount: Amount) -> None:
    assert parse_amount(text, "canary") == amount


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "number of hosts or a percentage"),
        ("five", "number of hosts or a percentage"),
        ("2.5", "number of hosts or a percentage"),
        ("x%", "number of hosts or a percentage"),
        ("0", "at least one host"),
        ("-3", "at least one host"),
        ("0%", "above 0 and at most 100"),
        ("100.5%", "above 0 and at most 100"),
        ("nan%", "above 0 and at most 100"),
    ],
)
def test_a_bad_amount_is_named(text: str, why: str) -> None:
    with pytest.raises(RolloutInputError) as refused:
        parse_amount(text, "--wave-size")
    assert str(refused.value).startswith(f"--wave-size {text!r}: ")
    assert why in str(refused.value)


@given(hundredths)
def test_an_amount_reads_back_from_its_text(p: int) -> None:
    amount = parse_amount(f"{p / 100}%", "canary")
    assert parse_amount(str(amount), "canary") == amount


def test_parse_percent() -> None:
    assert parse_percent("5%", "--max-fail") == 5.0
    assert parse_percent(" 0 ", "--max-fail") == 0.0
    assert parse_percent("100", "--max-fail") == 100.0
    for text, why in [
        ("five", "write a percentage"),
        ("", "write a percentage"),
        ("-1", "from 0 to 100"),
        ("101%", "from 0 to 100"),
        ("nan", "from 0 to 100"),
    ]:
        with pytest.raises(RolloutInputError) as refused:
            parse_percent(text, "--max-fail")
        assert str(refused.value).startswith(f"--max-fail {text!r}: ")
        assert why in str(refused.value)


def amounts() -> st.SearchStrategy[Amount]:
    return st.one_of(
        st.integers(1, 500).map(lambda n: Amount(n, False)),
        hundredths.map(lambda p: Amount(p / 100, True)),
    )


def waves(spec: RolloutSpec, total: int) -> list[int]:
    """The waves a rollout of ``total`` hosts runs, each taking what is left at most."""
    sizes: list[int] = []
    while sum(sizes) < total:
        sizes.append(min(total - sum(sizes), wave_size(spec, total, len(sizes))))
    return sizes


# A 1-host canary on 20,000 hosts walks ~2,000 waves: no per-example deadline on a
# shared machine.
@settings(deadline=None)
@given(amounts(), amounts(), st.integers(1, 20_000))
def test_waves_start_with_the_canary_and_double_up_to_the_wave_size(
    canary: Amount, size: Amount, total: int
) -> None:
    spec = RolloutSpec("p.yml", "school=1", canary=canary, wave_size=size)
    first = canary.of(total)
    cap = max(first, size.of(total))
    sizes = [wave_size(spec, total, n) for n in range(40)]
    assert sizes[0] == first
    for before, after in itertools.pairwise(sizes):
        assert after == min(cap, 2 * before)
        assert first <= after <= cap
    # Every host gets its turn.
    assert sum(waves(spec, total)) == total


def test_a_wave_size_example() -> None:
    spec = RolloutSpec("p.yml", "school=1", canary=Amount(2, False), wave_size=Amount(10, True))
    assert waves(spec, 100) == [2, 4, 8, 10, 10, 10, 10, 10, 10, 10, 10, 6]
    # A wave size below the canary never makes a wave smaller than the canary.
    small = RolloutSpec("p.yml", "school=1", canary=Amount(5, False), wave_size=Amount(1, False))
    assert [wave_size(small, 100, n) for n in range(3)] == [5, 5, 5]
    assert wave_size(spec, 0, 0) == 0


def test_the_lesson_gate() -> None:
    before = LessonRates(tried=40, failed=2)  # 5%
    enough = GATE_MIN_TRIED
    assert not gate_closed(before, LessonRates(enough - 1, enough - 1)), "too few to judge"
    assert gate_closed(before, LessonRates(enough, 1))
    assert not gate_closed(before, LessonRates(20, 1)), "the same rate as before"
    assert gate_closed(before, LessonRates(20, 2))
    assert not gate_closed(LessonRates(0, 0), LessonRates(enough, 0)), "no failure"
    assert gate_closed(LessonRates(0, 0), LessonRates(enough, 1)), "no history: any failure"
    assert LessonRates(0, 0).rate == 0.0
