"""Controller replicas for tests: several `schoolfleet-controller serve` on one
PostgreSQL database, one central-ops user made by the first, HAProxy in front."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.haproxy import HaProxy
from tests.procs import Controller, schoolctl


@dataclass
class City:
    """Replicas behind a balancer; ``ctl`` runs schoolctl through it as central ops."""

    replicas: list[Controller]
    lb: HaProxy

    @property
    def token(self) -> str:
        return self.replicas[0].admin_token

    def ctl(self, *args: str, timeout: float = 30) -> Any:
        return schoolctl(self.lb.address, *args, token=self.token, timeout=timeout)

    def devices(self) -> dict[str, dict[str, Any]]:
        done = self.ctl("devices", "list", "--json")
        assert done.code == 0, done.err
        return {d["device_id"]: d for d in done.json()}

    def sum(self, sample: str, replicas: list[Controller] | None = None) -> float:
        """A sample summed over the replicas' /metrics (those still running)."""
        return sum(r.metrics().get(sample, 0.0) for r in (replicas or self.replicas))


@contextlib.contextmanager
def city(tmp: Path, url: str, env: dict[str, str], count: int = 3) -> Iterator[City]:
    """``count`` replicas on the store at ``url`` behind HAProxy; all stopped after."""
    started: list[Controller] = []
    lb: HaProxy | None = None
    try:
        for n in range(1, count + 1):
            token = started[0].admin_token if started else ""
            c = Controller(tmp / f"c{n}", env=env, database_url=url, admin_token=token)
            c.workdir.mkdir()
            started.append(c.start())
        lb = HaProxy(tmp, [("127.0.0.1", r.grpc_port) for r in started]).start()
        yield City(started, lb)
    finally:
        if lb is not None:
            lb.stop()
        for c in started:
            c.stop()
