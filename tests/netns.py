"""Network namespaces made by a test: 198.18.0.0/15 addresses only, each deleted by its
own unique name."""

from __future__ import annotations

import json
import os
import random
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any

import pytest

TESTNET = IPv4Network("198.18.0.0/15")
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="network namespaces need root (CI runs as root)"
)


def ip(*args: str) -> str:
    """Runs `ip` and returns its output; a failure fails the test with ip's words."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def ip_json(*args: str) -> Any:
    return json.loads(ip("-j", *args))


@contextmanager
def namespace() -> Iterator[str]:
    """A fresh, uniquely named namespace with lo up; deleted afterwards, whatever happens."""
    name = f"sf-test-{uuid.uuid4().hex[:10]}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30, check=False)


@dataclass(frozen=True)
class Link:
    """A namespace joined to the machine by a veth pair: a /30 of the test network."""

    namespace: str
    machine: str  # the machine's end
    device: str  # the namespace's end


def _free_slash30() -> IPv4Network:
    """A /30 of 198.18.0.0/15 that no address or route of the machine overlaps."""
    used = [
        IPv4Network(r["dst"], strict=False)
        for r in ip_json("-4", "route", "show", "table", "all")
        if r.get("dst", "default") != "default"
    ]
    for link in ip_json("-4", "addr"):
        for info in link.get("addr_info", []):
            used.append(IPv4Network(f"{info['local']}/{info['prefixlen']}", strict=False))
    for _ in range(1000):
        net = IPv4Network((int(TESTNET.network_address) + 4 * random.randrange(2**15), 30))
        if not any(net.overlaps(u) for u in used):
            return net
    raise AssertionError("no free /30 in 198.18.0.0/15")


@contextmanager
def linked_namespace() -> Iterator[Link]:
    with ExitStack() as stack:
        ns = stack.enter_context(namespace())
        veth = f"sfv{uuid.uuid4().hex[:8]}"
        net = _free_slash30()
        machine, device = (str(a) for a in net.hosts())
        stack.callback(
            subprocess.run, ["ip", "link", "del", veth], capture_output=True, check=False
        )
        ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("addr", "add", f"{machine}/30", "dev", veth)
        ip("link", "set", veth, "up")
        ip("-n", ns, "addr", "add", f"{device}/30", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        yield Link(ns, machine, device)
