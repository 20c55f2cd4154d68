"""The agent's network report is real kernel data, read inside a namespace we build."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.netns import ip, ip_json, namespace, needs_root
from tests.procs import BIN

# Run in a fresh interpreter: which modules load is the point.
_LEAN = """
import json, sys
from agent.network import read_network, _iw
report = read_network()
loaded = sorted(m for m in sys.modules if m.startswith("pyroute2"))
iw, _ = _iw()
print(json.dumps({
    "interfaces": len(report.interfaces),
    "wireless": any(i.wireless for i in report.interfaces),
    "pyroute2": loaded,
    "iw": iw.__qualname__,
    "heavy": sorted(m for m in sys.modules if m.startswith(("pyroute2.ndb", "pyroute2.ipdb"))),
}))
"""
_PUBLIC = """
import json, pyroute2
print(json.dumps(pyroute2.IW.__module__))
"""


def _once_in(ns: str, config: Path) -> dict[str, Any]:
    """`schoolfleet-agent --once --json` run inside the namespace: its report."""
    agent = [str(BIN / "schoolfleet-agent"), "--config", str(config), "--once", "--json"]
    done = subprocess.run(
        ["ip", "netns", "exec", ns, *agent],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_the_agent_loads_pyroute2_only_for_wifi() -> None:
    lean = subprocess.run(
        [str(BIN / "python"), "-c", _LEAN], capture_output=True, text=True, timeout=60, check=True
    )
    got = json.loads(lean.stdout)
    assert got["interfaces"] >= 1
    # Links, addresses and routes need no pyroute2: only Wi-Fi loads it, and then IW only.
    if not got["wireless"]:
        assert got["pyroute2"] == []
    assert got["iw"] == "IW"
    assert got["heavy"] == []
    # The module loaded directly is where pyroute2's public IW lives.
    public = subprocess.run(
        [str(BIN / "python"), "-c", _PUBLIC], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(public.stdout) == "pyroute2.iwutil"


@needs_root
def test_once_reports_interfaces_addresses_and_default_route(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('device_id = "p1"\nkind = "panel"\nschool_id = "s1"\n')
    with namespace() as ns:
        ip("-n", ns, "link", "add", "sf0", "mtu", "1400", "type", "veth", "peer", "name", "sf1")
        ip("-n", ns, "addr", "add", "198.18.7.1/24", "dev", "sf0")
        ip("-n", ns, "addr", "add", "198.18.7.2/24", "dev", "sf1")
        ip("-n", ns, "link", "set", "sf0", "up")
        ip("-n", ns, "link", "set", "sf1", "up")
        ip("-n", ns, "route", "add", "default", "via", "198.18.7.2", "dev", "sf0")
        # Some traffic, so the counters are not all zero.
        subprocess.run(
            ["ip", "netns", "exec", ns, "ping", "-c", "3", "-i", "0.2", "-W", "1", "198.18.7.2"],
            capture_output=True,
            timeout=30,
            check=False,
        )
        report = _once_in(ns, config)
        kernel = {link["ifname"]: link for link in ip_json("-n", ns, "-s", "link", "show")}
    # A device with a wired link and loopback: its whole heartbeat is well under 1 KB.
    # Only the uplink goes to the controller: not lo, nor sf1 (a software link
    # without the default route); --once shows all three.
    assert report["reported_interfaces"] == ["sf0"]
    assert 200 < report["heartbeat_bytes"] < 1024
    network = report["network"]
    interfaces = {i["name"]: i for i in network["interfaces"]}
    assert set(interfaces) == {"lo", "sf0", "sf1"}
    sf0 = interfaces["sf0"]
    assert sf0["state"] == "up"
    assert sf0["mtu"] == 1400
    assert sf0["mac"] == kernel["sf0"]["address"]
    assert "198.18.7.1/24" in sf0["addresses"]
    assert sf0["tx_bytes"] > 0
    # Read a moment after the agent, the kernel's counters are at least as high.
    assert sf0["tx_bytes"] <= kernel["sf0"]["stats64"]["tx"]["bytes"]
    assert network["default_gateway"] == "198.18.7.2"
    assert network["default_interface"] == "sf0"
    assert network["wifi"] == []
    assert network["wifi_status"] == "no wireless"


@needs_root
def test_interfaces_coming_and_going_while_being_read_do_not_break_a_report(
    tmp_path: Path,
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('device_id = "p1"\nkind = "panel"\nschool_id = "s1"\n')
    with namespace() as ns:
        # Links appear and vanish as fast as the kernel allows, a bounded number of times.
        churn = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns,
                "sh",
                "-c",
                "for i in $(seq 400); do ip link add vx$i type veth peer name vy$i; "
                "ip link set vx$i up; ip link del vx$i; done",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        reports: list[dict[str, Any]] = []
        try:
            while churn.poll() is None and len(reports) < 15:
                reports.append(_once_in(ns, config))
        finally:
            churn.kill()
            churn.wait(10)
    assert reports, "the churn ended before any report was read"
    for report in reports:
        names = [i["name"] for i in report["network"]["interfaces"]]
        assert "lo" in names
