"""Controller replicas for tests: several `schoolfleet-controller serve` on one
PostgreSQL database, one central-ops user made by the first, HAProxy in front.

A lab city by default (plaintext streams, one balancer); with ``tls`` as a city runs
it: one CA made once and copied to every replica (docs/security.md), agents on mutual
TLS through one balancer, enrollment and schoolctl (TLS) through another."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.haproxy import HaProxy
from tests.procs import Controller, Result, init_controller_ca, schoolctl

# HAProxy reaches the replicas from this address; the tests reach them from 127.0.0.1.
BALANCER_SOURCE = "127.0.0.2"


@dataclass
class City:
    """Replicas behind a balancer; ``ctl`` runs schoolctl through it as central ops."""

    replicas: list[Controller]
    lb: HaProxy
    # With mutual TLS: the balancer for enrollment and schoolctl, and the CA's certificate.
    public: HaProxy | None = None
    ca_cert: Path | None = None

    @property
    def token(self) -> str:
        return self.replicas[0].admin_token

    def ctl(self, *args: str, timeout: float = 30) -> Result:
        public = self.lb if self.public is None else self.public
        return self.ctl_at(public.address, *args, timeout=timeout)

    def ctl_at(self, address: str, *args: str, timeout: float = 30) -> Result:
        """schoolctl as central ops at ``address``: the balancer, or one replica's
        (``schoolctl_address``)."""
        tls = () if self.ca_cert is None else ("--ca-cert", str(self.ca_cert))
        return schoolctl(address, *tls, *args, token=self.token, timeout=timeout)

    def schoolctl_address(self, replica: Controller) -> str:
        """Where schoolctl reaches this replica: its enrollment port with TLS."""
        return replica.address if self.ca_cert is None else f"127.0.0.1:{replica.enroll_port}"

    def devices(self) -> dict[str, dict[str, Any]]:
        done = self.ctl("devices", "list", "--json")
        assert done.code == 0, done.err
        return {d["device_id"]: d for d in done.json()}

    def sum(self, sample: str, replicas: list[Controller] | None = None) -> float:
        """A sample summed over the replicas' /metrics (those still running)."""
        return sum(r.metrics().get(sample, 0.0) for r in (replicas or self.replicas))


@contextlib.contextmanager
def city(
    tmp: Path, url: str, env: dict[str, str], count: int = 3, *, tls: bool = False
) -> Iterator[City]:
    """``count`` replicas on the store at ``url`` behind HAProxy; all stopped after.
    ``tls``: agents on mutual TLS, enrollment and schoolctl through a second balancer.
    As a city runs them: HAProxy names each client in a PROXY header, from
    BALANCER_SOURCE, which the replicas' proxy_from trusts."""
    started: list[Controller] = []
    balancers: list[HaProxy] = []
    ca = tmp / "ca"
    env = {**env, "SCHOOLFLEET_CONTROLLER_PROXY_FROM": f'["{BALANCER_SOURCE}"]'}
    if tls:
        init_controller_ca(ca)
        env = {
            **env,
            "SCHOOLFLEET_CONTROLLER_AGENT_TLS": "true",
            "SCHOOLFLEET_CONTROLLER_ENROLL_LISTEN": "127.0.0.1:0",
        }
    try:
        for n in range(1, count + 1):
            token = started[0].admin_token if started else ""
            c = Controller(tmp / f"c{n}", env=env, database_url=url, admin_token=token)
            c.workdir.mkdir()
            if tls:
                shutil.copytree(ca, c.workdir / "data")
            started.append(c.start())
        # Listed before each starts: one that fails to come up is stopped by its pid too.
        lb = HaProxy(
            tmp, [("127.0.0.1", r.grpc_port) for r in started], proxy_source=BALANCER_SOURCE
        )
        balancers.append(lb)
        lb.start()
        public: HaProxy | None = None
        if tls:
            (tmp / "public").mkdir()
            public = HaProxy(
                tmp / "public",
                [("127.0.0.1", r.enroll_port) for r in started],
                proxy_source=BALANCER_SOURCE,
            )
            balancers.append(public)
            public.start()
        yield City(started, lb, public, ca / "pki" / "ca.crt" if tls else None)
    finally:
        for balancer in balancers:
            balancer.stop()
        for c in started:
            c.stop()
