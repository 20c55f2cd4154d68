"""Debian's HAProxy in TCP mode in front of controller replicas, as a city runs them:
one address per kind of client, each connection passed whole (TLS and all) to a live
replica, a dead one dropped from the rotation by a health check and its sessions cut,
so that its agents reconnect through the others."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

# Where Debian puts haproxy: off a normal user's PATH.
_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"


@dataclass(frozen=True, slots=True)
class Route:
    """A frontend on ``port`` of each of ``binds`` and the replicas' ports it spreads
    connections over (its backend is named after it). With ``proxy_source``, HAProxy
    connects to the replicas from that address and puts a PROXY protocol v2 header
    naming the client before each connection (and its health checks), for replicas
    whose `proxy_from` names that address."""

    name: str
    port: int
    backends: list[tuple[str, int]]
    binds: tuple[str, ...] = ("127.0.0.1",)
    proxy_source: str = ""


def binary() -> str | None:
    """The haproxy program, if installed."""
    return shutil.which("haproxy") or shutil.which("haproxy", path=_SBIN)


def config(routes: list[Route], check_ms: int = 300, fall: int = 2) -> str:
    """haproxy.cfg: each route's frontend and backend; a replica is out after ``fall``
    failed connections ``check_ms`` apart, back in after one good one."""
    sections = []
    for route in routes:
        proxy = (
            f" source {route.proxy_source} send-proxy-v2 check-send-proxy"
            if route.proxy_source
            else ""
        )
        servers = "\n".join(
            f"    server replica{n} {host}:{port} check inter {check_ms} fall {fall} rise 1" + proxy
            for n, (host, port) in enumerate(route.backends, 1)
        )
        binds = "\n".join(f"    bind {host}:{route.port}" for host in route.binds)
        sections.append(
            f"""
frontend {route.name}
{binds}
    default_backend {route.name}_replicas

backend {route.name}_replicas
    balance leastconn
    # A dead replica's open streams are cut at once, so their agents reconnect.
    option tcp-check
    default-server on-marked-down shutdown-sessions
{servers}
"""
        )
    return """global
    # Each connection takes two descriptors; within a small machine's limit.
    maxconn 4000

defaults
    mode tcp
    timeout connect 2s
    # Agents' streams live for hours; their keepalives are the traffic.
    timeout client 1h
    timeout server 1h
    # A connection to a replica that died is tried on another.
    retries 2
    option redispatch
""" + "".join(sections)
