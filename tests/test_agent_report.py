"""Which heartbeats carry the full system and network reports, and what they weigh."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from agent.link_messages import heartbeat
from agent.network import Interface, NetworkReport, Wifi
from agent.report import FullReports, Report
from inventory.model import Condition
from tests.test_agent_status import FACTS, HEALTH

ETH = Interface(
    "eth0", 2, "up", "02:00:00:00:00:01", 1500, ["198.18.0.2/24"], 1000, 10, 20, 0, 0, False
)
WLAN = Interface("wlan0", 3, "up", "02:00:00:00:00:02", 1500, [], None, 5, 6, 0, 0, True)
AP = Wifi("wlan0", "a0:b1:c2:d3:e4:f5", "school", 5180, -58.0)
NET = NetworkReport([ETH, WLAN], "198.18.0.1", "eth0", [AP], "associated")
REPORT = Report(HEALTH, FACTS, NET, None, Condition.OK, [])


def _with_network(**changes: Any) -> Report:
    return replace(REPORT, network=replace(NET, **changes))


def test_full_on_first_then_every_interval() -> None:
    policy = FullReports(300)
    assert policy.due(REPORT, 1000.0)
    assert not policy.due(REPORT, 1030.0)
    assert not policy.due(REPORT, 1299.0)
    assert policy.due(REPORT, 1300.0)
    policy.reset()
    assert policy.due(REPORT, 1301.0)


def test_running_figures_wait_for_the_interval() -> None:
    policy = FullReports(300)
    policy.due(REPORT, 0.0)
    counters = replace(ETH, rx_bytes=10**9, tx_errors=3)
    roamed_signal = replace(AP, signal_dbm=-71.0)
    later = _with_network(interfaces=[counters, WLAN], wifi=[roamed_signal])
    assert not policy.due(replace(later, health=replace(HEALTH, cpu_percent=99)), 30.0)


def test_a_changed_shape_goes_out_at_once() -> None:
    changes = [
        _with_network(interfaces=[replace(ETH, addresses=["198.18.0.9/24"]), WLAN]),
        _with_network(interfaces=[replace(ETH, state="down"), WLAN]),
        _with_network(interfaces=[ETH]),
        _with_network(default_gateway=None, default_interface=None),
        _with_network(wifi=[replace(AP, bssid="a0:b1:c2:d3:e4:f6")]),
        replace(REPORT, condition=Condition.DEGRADED, reasons=["disk / at 91%"]),
        replace(REPORT, facts=replace(FACTS, kiosk_running=False)),
        replace(REPORT, network=None, network_error="netlink refused"),
    ]
    for changed in changes:
        policy = FullReports(300)
        policy.due(REPORT, 0.0)
        assert policy.due(changed, 30.0), changed


def test_interval_zero_sends_every_one_full() -> None:
    policy = FullReports(0)
    assert all(policy.due(REPORT, t) for t in (0.0, 0.0, 1.0))


def test_a_heartbeat_between_full_reports_is_small() -> None:
    full = heartbeat(REPORT, 0, 0, full=True)
    lean = heartbeat(REPORT, 0, 0, full=False)
    assert full.HasField("system") and full.HasField("network")
    assert not lean.HasField("system") and not lean.HasField("network")
    assert lean.condition == full.condition
    assert lean.ByteSize() < 100 < full.ByteSize()
