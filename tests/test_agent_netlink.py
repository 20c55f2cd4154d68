"""The agent's rtnetlink reader against the kernel of a namespace we build, and its
parsers against any bytes."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from agent.netlink import (
    _parsed,
    attributes,
    parse_address,
    parse_default_route,
    parse_link,
)
from tests.netns import ip, ip_json, namespace, needs_root
from tests.procs import BIN

# One reader (one socket) asked before and after the namespace changes, as the
# agent's Reporter does heartbeat after heartbeat.
_READER = """
import json, socket, sys
from agent.netlink import Rtnetlink
from agent.network import has_default_route
rtnl = Rtnetlink()
def state():
    links = {l.index: l for l in rtnl.links()}
    routes = {
        str(f): [[r.gateway, links[r.oif].name if r.oif in links else None]
                 for r in rtnl.default_routes(f)]
        for f in (socket.AF_INET, socket.AF_INET6)
    }
    return {
        "links": {l.name: [l.operstate, l.mac, l.mtu, l.loopback, l.counters[1]]
                  for l in links.values()},
        "addresses": {links[i].name: a for i, a in rtnl.addresses().items()},
        "routes": routes,
        "has_default_route": has_default_route(),
    }
print(json.dumps(state()), flush=True)
sys.stdin.readline()  # the test changes the namespace meanwhile
print(json.dumps(state()), flush=True)
"""


@needs_root
def test_links_addresses_and_default_routes_are_the_kernels() -> None:
    with (
        namespace() as ns,
        subprocess.Popen(
            ["ip", "netns", "exec", ns, str(BIN / "python"), "-c", _READER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        ) as reader,
    ):
        assert reader.stdout is not None and reader.stdin is not None
        before: dict[str, Any] = json.loads(reader.stdout.readline())
        ip("-n", ns, "link", "add", "nl0", "mtu", "1280", "type", "veth", "peer", "name", "nl1")
        ip("-n", ns, "addr", "add", "198.18.40.1/24", "dev", "nl0")
        ip("-n", ns, "addr", "add", "2001:db8:40::1/64", "dev", "nl0", "nodad")
        ip("-n", ns, "link", "set", "nl0", "up")
        ip("-n", ns, "link", "set", "nl1", "up")
        ip("-n", ns, "route", "add", "default", "via", "198.18.40.2", "dev", "nl0")
        ip("-n", ns, "-6", "route", "add", "default", "via", "2001:db8:40::2", "dev", "nl0")
        reader.stdin.write("\n")
        reader.stdin.flush()
        after: dict[str, Any] = json.loads(reader.stdout.readline())
        kernel = {link["ifname"]: link for link in ip_json("-n", ns, "-s", "link", "show")}
        reader.stdin.close()
        assert reader.wait(10) == 0
    # Before: loopback only, and no route, which the lesson check says too.
    assert list(before["links"]) == ["lo"]
    assert before["links"]["lo"][3] is True
    assert before["routes"] == {"2": [], "10": []}
    assert before["has_default_route"] is False
    # After, on the same socket: the new links as `ip` shows them.
    assert set(after["links"]) == {"lo", "nl0", "nl1"}
    state, mac, mtu, loopback, tx = after["links"]["nl0"]
    assert (state, mac, mtu, loopback) == ("up", kernel["nl0"]["address"], 1280, False)
    assert tx <= kernel["nl0"]["stats64"]["tx"]["bytes"]
    assert "198.18.40.1/24" in after["addresses"]["nl0"]
    assert "2001:db8:40::1/64" in after["addresses"]["nl0"]
    assert "127.0.0.1/8" in after["addresses"]["lo"]
    assert after["routes"] == {"2": [["198.18.40.2", "nl0"]], "10": [["2001:db8:40::2", "nl0"]]}
    assert after["has_default_route"] is True


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_are_left_out(data: bytes) -> None:
    attributes(data)
    for parse in (parse_link, parse_address, parse_default_route):
        _parsed(parse, [data])
