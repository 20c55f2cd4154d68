"""The PROXY front benchmark's own arithmetic (bench/proxy_front.py): its command line,
the arms' order, the cost per 1,000 heartbeats and the ratios in its record."""

from __future__ import annotations

import math

import pytest

from bench.proxy_front import (
    PLAIN,
    PROXIED,
    ArmResult,
    orders,
    parse_args,
    per_thousand,
    ratios,
    summary,
    table,
)


def _result(arm: str, cores: float, stored: float, rss_mib: float = 200.0) -> ArmResult:
    return ArmResult(
        arm=arm,
        round=1,
        devices=2000,
        connected=2000,
        streams=2000,
        offered_per_s=1000.0,
        stored_per_s=stored,
        received_per_s=stored,
        backlog_end=10.0,
        controller_cpu=cores,
        haproxy_cpu=0.1,
        generators_cpu=0.5,
        other_cpu=0.2,
        rss_idle_kib=100 * 1024,
        rss_end_kib=int(rss_mib * 1024),
        window_seconds=20.0,
    )


def test_the_defaults_are_a_load_both_arms_keep_up_with_in_three_rounds() -> None:
    args = parse_args([])
    assert (args.rounds, args.devices, args.rate, args.procs) == (3, 2000, 0.5, 4)
    assert args.json is None
    assert not args.tls
    assert parse_args(["--rounds", "5", "--json", "out.json"]).rounds == 5


def test_tls_takes_a_rate_the_controllers_whole_second_interval_can_give() -> None:
    # The devices beat at the interval the Welcome names: heartbeat_interval = 1 / rate.
    assert parse_args(["--tls"]).tls
    assert parse_args(["--tls", "--rate", "0.25"]).rate == 0.25


@pytest.mark.parametrize(
    "argv",
    [
        ["--rounds", "0"],
        ["--rate", "0"],
        ["--devices", "20000", "--procs", "4"],
        ["--tls", "--rate", "0.4"],
    ],
)
def test_a_command_line_that_measures_nothing_is_refused(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert "bench/proxy_front.py: error:" in capsys.readouterr().err


def test_the_arms_alternate_which_goes_first() -> None:
    assert orders(3) == [(PLAIN, PROXIED), (PROXIED, PLAIN), (PLAIN, PROXIED)]
    assert PROXIED.settings == {"proxy_from": '["127.0.0.2"]'}
    assert (PLAIN.proxy_source, PROXIED.proxy_source) == ("", "127.0.0.2")


def test_the_cost_is_cpu_seconds_per_thousand_heartbeats_stored() -> None:
    # 0.6 cores while storing 1,200 heartbeats/s: 0.6 core-s per 1,200 heartbeats.
    assert per_thousand(0.6, 1200.0) == pytest.approx(0.5)
    assert math.isnan(per_thousand(0.6, 0.0))
    assert _result("proxy", 0.63, 1000.0).cpu_per_thousand == pytest.approx(0.63)


def test_the_ratio_is_the_front_over_the_baseline_of_the_same_round() -> None:
    assert ratios([0.4, 0.5], [0.6, 0.5]) == pytest.approx([1.5, 1.0])
    assert math.isnan(ratios([0.0], [0.3])[0])


def test_the_record_shows_medians_rounds_and_the_ratio_of_the_medians() -> None:
    rounds = [
        [_result("plain", 0.40, 1000.0), _result("proxy", 0.60, 1000.0, 230.0)],
        [_result("plain", 0.30, 1000.0), _result("proxy", 0.66, 1000.0, 230.0)],
        [_result("plain", 0.50, 1000.0), _result("proxy", 0.70, 1000.0, 230.0)],
    ]
    cost_row = next(line for line in table(rounds) if "per 1,000 heartbeats" in line)
    # Medians 0.400 and 0.660; the rounds' ratios 1.50, 2.20, 1.40, their median 1.50.
    assert cost_row.endswith(
        "| **0.400** (0.400 / 0.300 / 0.500) | **0.660** (0.600 / 0.660 / 0.700) "
        "| **1.50** (1.50 / 2.20 / 1.40) |"
    )
    lines = summary(rounds)
    assert lines[0].endswith("b/a of the medians **1.65**")  # 0.660 / 0.400
    assert lines[2].endswith("b/a of the medians **1.15**")  # 230 MiB / 200 MiB
