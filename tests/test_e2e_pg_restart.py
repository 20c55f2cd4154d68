"""PostgreSQL restarted under two replicas with agents heartbeating: the replicas hold
what they cannot store and ack nothing meanwhile, store it once the database is back
(none lost, none twice), and no agent's stream is closed by it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.haproxy import HaProxy
from tests.pg_cluster import throwaway_cluster
from tests.procs import Agent, Controller, schoolctl, wait_until

pytestmark = pytest.mark.e2e

DEVICES = 6
ENV = {
    "SCHOOLFLEET_CONTROLLER_HEARTBEAT_INTERVAL": "1",
    "SCHOOLFLEET_CONTROLLER_LEASE_SECONDS": "3",
}


def _devices(lb: HaProxy, token: str) -> dict[str, dict[str, Any]]:
    done = schoolctl(lb.address, "devices", "list", "--json", token=token)
    assert done.code == 0, done.err
    return {d["device_id"]: d for d in done.json()}


def _closed(replicas: list[Controller]) -> float:
    return sum(
        v
        for r in replicas
        for k, v in r.metrics().items()
        if k.startswith("schoolfleet_streams_closed_total")
    )


@pytest.mark.slow
def test_a_database_restart_loses_nothing_and_closes_no_stream(
    tmp_path: Path, agents: list[Agent]
) -> None:
    with throwaway_cluster() as cluster:
        url = cluster.url("postgres")
        replicas: list[Controller] = []
        lb: HaProxy | None = None
        try:
            for n in (1, 2):
                token = replicas[0].admin_token if replicas else ""
                c = Controller(tmp_path / f"c{n}", env=ENV, database_url=url, admin_token=token)
                c.workdir.mkdir()
                replicas.append(c.start())
            lb = HaProxy(tmp_path, [("127.0.0.1", r.grpc_port) for r in replicas]).start()
            token = replicas[0].admin_token
            ids = [f"panel-{n}" for n in range(DEVICES)]
            for device_id in ids:
                agents.append(Agent(tmp_path, device_id, "panel", "s1", "r1", lb.address).start())

            def online() -> bool:
                devices = _devices(lb, token)
                return len(devices) == DEVICES and all(
                    d["status"] == "online" for d in devices.values()
                )

            wait_until(online, 30, "every device online")
            closed_before = _closed(replicas)
            before = {d: v["last_seq"] for d, v in _devices(lb, token).items()}

            cluster.stop()
            # Longer than the store pool's wait for a connection (10 s): the batches
            # written meanwhile fail, and are held.
            time.sleep(12)
            cluster.start()

            def caught_up() -> bool:
                now = _devices(lb, token)
                return all(now[d]["last_seq"] >= before[d] + 13 for d in ids)

            wait_until(caught_up, 30, "the held heartbeats stored")
            assert _closed(replicas) == closed_before, "no stream closed by the restart"
            for agent in agents:
                agent.stop()
            after = _devices(lb, token)
            assert {d: after[d]["seq_gaps"] for d in ids} == dict.fromkeys(ids, 0)
            for d in ids:
                # Every heartbeat from the first to the last stored exactly once.
                assert after[d]["heartbeats_stored"] == after[d]["last_seq"], after[d]
            logs = "".join(r.log_text() for r in replicas)
            assert "store unavailable; holding" in logs
            assert "store available again" in logs
        finally:
            if lb is not None:
                lb.stop()
            for c in replicas:
                c.stop()
