"""The agent's network reader against the kernel of a namespace we build (as `ip -j`
shows it), and its route-file parsers against any text."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.routes import Route, ipv4_default_routes, ipv6_default_routes
from tests.netns import ip, ip_json, namespace, needs_root
from tests.procs import BIN

# One reader asked before and after each change of the namespace, as the agent's
# Reporter does heartbeat after heartbeat.
_READER = """
import json, sys
from dataclasses import asdict
from agent.network import NetworkReader, has_default_route
reader = NetworkReader()
for line in sys.stdin:
    report = reader.read()
    print(json.dumps({
        "interfaces": {i.name: asdict(i) for i in report.interfaces},
        "gateway": report.default_gateway,
        "interface": report.default_interface,
        "has_default_route": has_default_route(),
    }), flush=True)
"""


class _Reader:
    """The reader process in a namespace: one read per call."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, str(BIN / "python"), "-c", _READER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def read(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        got: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return got

    def close(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        try:
            assert self.proc.wait(10) == 0
        finally:
            self.proc.stdout.close()


def _kernel(ns: str) -> dict[str, Any]:
    """What `ip -j` says of the namespace: links, addresses, default routes."""
    links = {link["ifname"]: link for link in ip_json("-n", ns, "-s", "link", "show")}
    addresses = {
        a["ifname"]: sorted(f"{i['local']}/{i['prefixlen']}" for i in a["addr_info"])
        for a in ip_json("-n", ns, "addr", "show")
    }
    routes = {
        family: [
            [r.get("gateway"), r["dev"]]
            for r in ip_json("-n", ns, family, "route", "show", "default")
            if r.get("type", "unicast") == "unicast"
        ]
        for family in ("-4", "-6")
    }
    return {"links": links, "addresses": addresses, "routes": routes}


def _assert_same(read: dict[str, Any], kernel: dict[str, Any]) -> None:
    assert set(read["interfaces"]) == set(kernel["links"])
    for name, i in read["interfaces"].items():
        link = kernel["links"][name]
        assert i["index"] == link["ifindex"]
        assert i["state"] == link["operstate"].lower()
        assert i["mac"] == link.get("address", "")
        assert i["mtu"] == link["mtu"]
        assert i["loopback"] == ("LOOPBACK" in link["flags"])
        assert sorted(i["addresses"]) == kernel["addresses"].get(name, [])
        # Read a moment before `ip`, the agent's counters are at most the kernel's.
        assert i["tx_bytes"] <= link["stats64"]["tx"]["bytes"]
        assert i["rx_bytes"] <= link["stats64"]["rx"]["bytes"]
        assert i["physical"] is False  # nothing in a namespace we build is hardware
    v4 = kernel["routes"]["-4"]
    assert [read["gateway"], read["interface"]] == (v4[0] if v4 else [None, None])
    assert read["has_default_route"] == bool(v4 or kernel["routes"]["-6"])


@needs_root
def test_links_addresses_and_default_routes_are_the_kernels() -> None:
    with namespace() as ns:
        reader = _Reader(ns)
        try:
            # Loopback only, and no route, which the lesson check says too.
            before = reader.read()
            _assert_same(before, _kernel(ns))
            assert list(before["interfaces"]) == ["lo"]
            assert before["interfaces"]["lo"]["loopback"] is True
            assert before["has_default_route"] is False

            ip("-n", ns, "link", "add", "nl0", "mtu", "1280", "type", "veth", "peer", "name", "nl1")
            ip("-n", ns, "addr", "add", "198.18.40.1/24", "dev", "nl0")
            # An IPv4 address with a label belongs to its link all the same.
            ip("-n", ns, "addr", "add", "198.18.41.1/25", "dev", "nl0", "label", "nl0:v")
            ip("-n", ns, "addr", "add", "2001:db8:40::1/64", "dev", "nl0", "nodad")
            ip("-n", ns, "link", "set", "nl0", "up")
            ip("-n", ns, "link", "set", "nl1", "up")
            ip("-n", ns, "route", "add", "default", "via", "198.18.40.2", "dev", "nl0")
            ip("-n", ns, "-6", "route", "add", "default", "via", "2001:db8:40::2", "dev", "nl0")
            subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "ping",
                    "-c",
                    "2",
                    "-i",
                    "0.2",
                    "-W",
                    "1",
                    "198.18.40.2",
                ],
                capture_output=True,
                timeout=30,
                check=False,
            )
            after = reader.read()
            _assert_same(after, _kernel(ns))
            nl0 = after["interfaces"]["nl0"]
            assert (nl0["state"], nl0["mtu"]) == ("up", 1280)
            assert nl0["tx_bytes"] > 0
            assert "198.18.41.1/25" in nl0["addresses"]
            assert any(a.startswith("fe80:") and "%" not in a for a in nl0["addresses"])
            # The uplink's speed (a veth says 10000); no other software link's.
            assert nl0["speed_mbit"] == 10000
            assert after["interfaces"]["nl1"]["speed_mbit"] is None
            assert [after["gateway"], after["interface"]] == ["198.18.40.2", "nl0"]

            # Links removed and others added between reads, on the same reader.
            ip("-n", ns, "link", "del", "nl0")
            ip("-n", ns, "link", "add", "nl2", "type", "veth", "peer", "name", "nl3")
            ip("-n", ns, "addr", "add", "198.18.42.1/24", "dev", "nl2")
            # A route the kernel keeps but that leads nowhere is no default.
            ip("-n", ns, "route", "add", "unreachable", "default")
            later = reader.read()
            _assert_same(later, _kernel(ns))
            assert set(later["interfaces"]) == {"lo", "nl2", "nl3"}
            assert later["interfaces"]["nl2"]["state"] == "down"
            assert [later["gateway"], later["interface"]] == [None, None]
            assert later["has_default_route"] is False

            # The same name made again: a new link, with its own counters.
            ip("-n", ns, "link", "del", "nl2")
            ip("-n", ns, "link", "add", "nl2", "type", "veth", "peer", "name", "nl3")
            again = reader.read()
            _assert_same(again, _kernel(ns))
            assert again["interfaces"]["nl2"]["index"] != later["interfaces"]["nl2"]["index"]
        finally:
            reader.close()


# The kernel's own lines (x86, little-endian): a default via 198.18.40.2 on nl0 with
# metric 100, a connected route, and IPv6's unreachable default on lo.
_V4 = (
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
    "nl0\t00000000\t022812C6\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
    "nl0\t002812C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
)
_V6 = (
    "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
    "20010db8004000000000000000000002 00000400 00000001 00000000 00000003      nl0\n"
    "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
    "00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n"
)


def test_route_files_as_the_kernel_writes_them() -> None:
    assert ipv4_default_routes(_V4) == [Route("nl0", "198.18.40.2", 100)]
    assert ipv6_default_routes(_V6) == [Route("nl0", "2001:db8:40::2", 1024)]


def _field(pattern: str, *usual: str) -> st.SearchStrategy[str]:
    """One field of a route line: mostly what the kernel writes (a line must get past
    most fields to reach the last checks), else well-formed, else any text without
    whitespace (whitespace, which changes a line's field count, comes in ``text``)."""
    kernel = st.sampled_from(usual) if usual else st.from_regex(pattern, fullmatch=True)
    return st.one_of(
        kernel,
        kernel,
        kernel,
        st.from_regex(pattern, fullmatch=True),
        st.text(st.characters(blacklist_categories=("Z", "C")), min_size=1, max_size=34),
    )


_HEX8 = _field(r"[0-9A-Fa-f]{8}", "00000000", "ffffffff")
_NAME = _field(r"[a-z0-9.]{1,15}", "*", "lo")
_NUMBER = _field(r"-?[0-9]{1,10}", "0", "-1", "100")
_V4_LINE = st.tuples(
    _NAME,
    _HEX8,
    _HEX8,
    _field(r"[0-9A-F]{4}", "0001", "0003", "0201"),
    _NUMBER,
    _NUMBER,
    _NUMBER,
    _HEX8,
    _NUMBER,
    _NUMBER,
    _NUMBER,
).map("\t".join)
_HEX32 = _field(r"[0-9a-f]{32}", "0" * 32)
_HEX2 = _field(r"[0-9a-f]{2}", "00", "80")
_V6_LINE = st.tuples(
    _HEX32,
    _HEX2,
    _HEX32,
    _HEX2,
    _HEX32,
    _HEX8,
    _HEX8,
    _HEX8,
    _field(r"[0-9a-f]{8}", "00000001", "00000003", "00200200"),
    _NAME,
).map(" ".join)


@settings(max_examples=400)
@given(st.text(max_size=400), st.lists(st.one_of(_V4_LINE, _V6_LINE), max_size=6))
def test_any_text_in_the_route_files_parses_or_is_skipped(text: str, lines: list[str]) -> None:
    near = "\n".join(lines)
    for content in (text, near, _V4 + text, _V6 + near):
        for parse in (ipv4_default_routes, ipv6_default_routes):
            routes = parse(content)
            assert all(isinstance(r, Route) for r in routes)
            assert [r.metric for r in routes] == sorted(r.metric for r in routes)
