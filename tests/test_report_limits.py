"""A full report's size does not grow with the host: the interfaces that matter go out,
the rest stay local, and everything has a bound."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from typing import Any

from agent.link_messages import heartbeat_size
from agent.network import Interface, NetworkReport, Wifi
from agent.report import FullReports, Report
from agent.report_limits import (
    HARD_BOUND_BYTES,
    MAX_ADDRESSES,
    MAX_INTERFACES,
    reported_interfaces,
)
from agent.system import Filesystem
from inventory.model import Condition
from tests.netns import ip, namespace, needs_root
from tests.procs import BIN
from tests.test_agent_status import FACTS, HEALTH


def _link(name: str, index: int, **kw: Any) -> Interface:
    values: dict[str, Any] = {
        "state": "up",
        "mac": "02:00:00:00:00:01",
        "mtu": 1500,
        "addresses": [],
        "speed_mbit": None,
        "rx_bytes": 0,
        "tx_bytes": 0,
        "rx_errors": 0,
        "tx_errors": 0,
        "wireless": False,
    }
    values.update(kw)
    return Interface(name=name, index=index, **values)


LO = _link("lo", 1, loopback=True, addresses=["127.0.0.1/8", "::1/128"])
ETH = _link("eth0", 2, physical=True, addresses=["198.18.0.2/24"], speed_mbit=1000)
ETH1 = _link("eth1", 3, physical=True, state="down")
WLAN = _link("wlan0", 4, physical=True, wireless=True, addresses=["198.18.1.2/24"])
VETH = _link("veth3a9f", 5, addresses=["198.18.2.1/24"])
BRIDGE = _link("docker0", 6, addresses=["198.18.3.1/24"])
TUN = _link("tun0", 7, addresses=["198.18.4.2/32"])


def test_the_interfaces_that_matter_are_reported_in_order() -> None:
    net = NetworkReport([LO, ETH, ETH1, WLAN, VETH, BRIDGE], "198.18.0.1", "eth0")
    assert [i.name for i in reported_interfaces(net)] == ["eth0", "wlan0", "eth1"]
    # A software link that carries the default route is the uplink: it goes first.
    via_tunnel = NetworkReport([LO, ETH, VETH, TUN], "198.18.4.1", "tun0")
    assert [i.name for i in reported_interfaces(via_tunnel)] == ["tun0", "eth0"]
    # No route at all: the hardware is still reported, loopback never.
    assert [i.name for i in reported_interfaces(NetworkReport([LO, ETH], None, None))] == ["eth0"]


def test_many_hardware_interfaces_and_addresses_are_capped() -> None:
    many = [
        _link(f"eth{n}", n + 2, physical=True, state="up" if n % 2 else "down") for n in range(20)
    ]
    v6 = [f"2001:db8::{n}/64" for n in range(10)] + ["fe80::1/64"]
    uplink = _link("br0", 99, addresses=["fe80::2/64", *v6])
    got = reported_interfaces(NetworkReport([*many, uplink], "198.18.0.1", "br0"))
    assert len(got) == MAX_INTERFACES
    assert got[0].name == "br0" and len(got[0].addresses) == MAX_ADDRESSES
    assert not any(a.startswith("fe80:") for a in got[0].addresses)
    # Hardware that is up comes before hardware that is down.
    assert all(i.state == "up" for i in got[1:])


def test_the_largest_possible_full_heartbeat_stays_under_the_hard_bound() -> None:
    worst_ssid = "\ufffd" * 32  # 32 undecodable bytes, each shown as U+FFFD
    interfaces = [
        _link(
            f"wlan-{n:010d}",
            n,
            physical=True,
            wireless=True,
            mac=":".join(["ff"] * 20),  # InfiniBand's 20-byte address
            mtu=2**32 - 1,
            addresses=[f"ffff:ffff:ffff:ffff:ffff:ffff:ffff:{n:04x}/128" for n in range(30)],
            speed_mbit=2**32 - 1,
            rx_bytes=2**64 - 1,
            tx_bytes=2**64 - 1,
            rx_errors=2**64 - 1,
            tx_errors=2**64 - 1,
        )
        for n in range(1, 60)
    ]
    wifi = [Wifi(i.name, "ff:ff:ff:ff:ff:ff", worst_ssid, 2**32 - 1, -1e9) for i in interfaces]
    network = NetworkReport(interfaces, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "x" * 15, wifi)
    facts = replace(
        FACTS,
        os_name="n" * 500,
        filesystems=[Filesystem("/" + "m" * 4095, "f" * 200, 2**64 - 1, 99.9)] * 50,
        temperatures_c={f"chip-{'c' * 300}-{n}": 1e9 for n in range(50)},
        swap_percent=100.0,
        battery_percent=100.0,
        on_ac_power=False,
        kiosk_running=False,
        agent_rss_bytes=2**64 - 1,
        agent_cpu_percent=1e9,
    )
    reasons = [f"disk /{'m' * 4095} at 100%"] * 100
    report = Report(HEALTH, facts, network, None, Condition.CRITICAL, reasons)
    size = heartbeat_size(report)
    assert size <= HARD_BOUND_BYTES, size


def test_a_container_link_coming_and_going_sends_no_full_report() -> None:
    net = NetworkReport([LO, ETH, WLAN], "198.18.0.1", "eth0")
    report = Report(HEALTH, FACTS, net, None, Condition.OK, [])
    policy = FullReports(300)
    assert policy.due(report, 0.0)
    busier = replace(report, network=replace(net, interfaces=[LO, ETH, WLAN, VETH, BRIDGE]))
    assert not policy.due(busier, 30.0)
    # The uplink's address changing still goes out at once.
    moved = replace(ETH, addresses=["198.18.0.9/24"])
    assert policy.due(replace(report, network=replace(net, interfaces=[LO, moved, WLAN])), 60.0)


# Inside the namespace: the agent's own collection and encoding, decoded back.
_ENCODED = """
import json
from agent.link_messages import heartbeat
from agent.report import Reporter
from agent.settings import AgentSettings
from inventory.model import DeviceKind
from protos.schoolfleet.v1 import agent_pb2
reporter = Reporter(AgentSettings("p1", DeviceKind.PANEL, "s1"))
report = reporter.collect()
message = agent_pb2.AgentMessage(seq=2**25, heartbeat=heartbeat(report, 0, 0))
print(json.dumps({
    "seen": len(report.network.interfaces),
    "bytes": message.ByteSize(),
    "unbounded_network_bytes": sum(
        len(i.name) + len(i.mac) + 40 + sum(len(a) + 2 for a in i.addresses)
        for i in report.network.interfaces
    ),
    "sent": [i.name for i in message.heartbeat.network.interfaces],
    "sent_addresses": {i.name: list(i.addresses) for i in message.heartbeat.network.interfaces},
    "default_interface": message.heartbeat.network.default_interface,
}))
"""


@needs_root
def test_a_host_with_many_links_sends_its_uplink_in_under_1_kb() -> None:
    with namespace() as ns:
        # The uplink: a veth with addresses and the default route.
        ip("-n", ns, "link", "add", "up0", "type", "veth", "peer", "name", "up1")
        ip("-n", ns, "addr", "add", "198.18.9.1/24", "dev", "up0")
        ip("-n", ns, "link", "set", "up0", "up")
        ip("-n", ns, "link", "set", "up1", "up")
        ip("-n", ns, "route", "add", "default", "via", "198.18.9.2", "dev", "up0")
        # A shared host's clutter: container veths on a bridge, more links up and down.
        ip("-n", ns, "link", "add", "br-c", "type", "bridge")
        ip("-n", ns, "addr", "add", "198.18.10.1/24", "dev", "br-c")
        ip("-n", ns, "link", "set", "br-c", "up")
        for n in range(16):
            ip("-n", ns, "link", "add", f"veth{n:02d}a", "type", "veth", "peer", f"veth{n:02d}b")
            ip("-n", ns, "link", "set", f"veth{n:02d}a", "master", "br-c", "up")
        for n in range(10):
            ip("-n", ns, "link", "add", f"lab{n}a", "type", "veth", "peer", f"lab{n}b")
            if n % 2:
                ip("-n", ns, "addr", "add", f"198.18.{20 + n}.1/24", "dev", f"lab{n}a")
                ip("-n", ns, "link", "set", f"lab{n}a", "up")
        done = subprocess.run(
            ["ip", "netns", "exec", ns, str(BIN / "python"), "-c", _ENCODED],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["seen"] == 56  # lo, the uplink pair, the bridge, 32 + 20 veths
    # The whole report, everything said of 56 links, would be several KB.
    assert got["unbounded_network_bytes"] > 3000
    assert got["sent"] == ["up0"]
    assert got["default_interface"] == "up0"
    assert got["sent_addresses"]["up0"][0] == "198.18.9.1/24"
    assert got["bytes"] < 1024, got
