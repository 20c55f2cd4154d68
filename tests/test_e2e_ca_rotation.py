"""A new CA for a running fleet, and new server names, without `init --force`.

Real controller and agents over mutual TLS: `ca add-next` makes a second CA that both
sides trust at once, the agents renew onto it while they report, `ca retire-old`
leaves only the new one, and a certificate of the old CA no longer gets in.
`ca server-cert` gives the controller new names while its devices stay connected.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.hostile_fleet import device_row, enroll_as, seed_token
from tests.hostile_wire import tls_channel
from tests.procs import Agent, Controller, Result, controller_cli, wait_until
from tests.raw_stream import RawStream, hello
from tests.test_e2e_cert_renewal import SCHOOL, controller, creds, enrolled_agent, read

pytestmark = pytest.mark.e2e


def ca(c: Controller, *args: str) -> Result:
    """`schoolfleet-controller ca ...` on the controller's own data, as an operator runs it."""
    where = ["--data-dir", str(c.workdir / "data"), "--database", f"sqlite://{c.database}"]
    return controller_cli("ca", *args, *where)


def reporting(c: Controller, device_id: str, at_least: int = 2) -> bool:
    row = device_row(c.database, device_id)
    return row is not None and row.heartbeats_stored >= at_least


class Silence:
    """Samples the store in a thread: the longest any device went without a heartbeat."""

    def __init__(self, database: Path, device_ids: list[str]) -> None:
        self.longest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(database, device_ids))
        self._thread.start()

    def _run(self, database: Path, device_ids: list[str]) -> None:
        import time

        marks = ",".join("?" * len(device_ids))
        while not self._stop.wait(0.1):
            rows = read(
                database,
                f"SELECT last_heartbeat FROM devices WHERE device_id IN ({marks})",
                *device_ids,
            )
            now = time.time()
            self.longest = max([self.longest, *(now - float(r[0]) for r in rows)])  # type: ignore[arg-type]

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.longest


@contextlib.contextmanager
def agents_of(c: Controller, *device_ids: str) -> Iterator[list[Agent]]:
    started: list[Agent] = []
    try:
        for device_id in device_ids:
            started.append(enrolled_agent(c, device_id))
        for device_id in device_ids:
            wait_until(partial(reporting, c, device_id), 30, f"{device_id} reporting")
        yield started
    finally:
        for agent in started:
            agent.stop()


def test_the_fleet_moves_to_a_new_ca_online_and_the_old_ca_is_refused_after(
    tmp_path: Path,
) -> None:
    with (
        controller(tmp_path, lifetime=3600, spread=2) as c,
        agents_of(c, "panel-1", "panel-2") as agents,
    ):
        pki = c.workdir / "data/pki"
        old_ca = (pki / "ca.crt").read_bytes()
        # A device that never renews (no "renew" capability): it stays on the old CA.
        with contextlib.closing(tls_channel(c.enroll_port, old_ca)) as enroll:
            straggler = enroll_as(enroll, seed_token(c.database, SCHOOL), "panel-old")
        stream = RawStream(c.address, creds(old_ca, straggler))
        stream.send(hello("panel-old", SCHOOL))
        assert stream.next().WhichOneof("body") == "welcome"
        silence = Silence(c.database, ["panel-1", "panel-2"])

        added = ca(c, "add-next", "--json")
        assert added.code == 0, added.err
        next_id = added.json()["id"]
        # The agents trust both CAs, and renew onto the new one within the spread.
        for agent in agents:
            trusted = agent.workdir / f"tls-{agent.device_id}/ca.crt"
            wait_until(
                partial(trusts_two, trusted),
                10,
                f"{agent.device_id} trusting both CAs",
            )

        def moved() -> dict[str, Any] | None:
            status = ca(c, "status", "--json")
            assert status.code == 0, status.err
            fleet: dict[str, Any] = status.json()["fleet"]
            return fleet if fleet["on_other_ca"] == 1 else None

        fleet = wait_until(moved, 20, "both agents renewed onto the next CA", step=0.5)
        assert fleet == {
            "devices": 3,
            "on_issuing_ca": 2,
            "on_other_ca": 1,
            "renewal_pending": 0,
            "decommissioned": 0,
            "behind": ["panel-old"],
        }
        metrics = c.metrics()
        assert metrics['schoolfleet_device_certificates{state="all"}'] == 3
        assert metrics['schoolfleet_device_certificates{state="on_other_ca"}'] == 1
        assert metrics['schoolfleet_device_certificates{state="expiring"}'] == 0
        assert (
            metrics['schoolfleet_certificate_expiry_timestamp_seconds{certificate="ca_next"}']
            > metrics['schoolfleet_certificate_expiry_timestamp_seconds{certificate="ca"}']
        )
        on_new = read(
            c.database, "SELECT device_id FROM device_certs WHERE ca_id = ? ORDER BY 1", next_id
        )
        assert on_new == [("panel-1",), ("panel-2",)]

        # Retiring the old CA while a device still needs it is refused, naming it.
        refused = ca(c, "retire-old")
        assert refused.code == 2 and refused.out == ""
        assert refused.err.strip() == (
            "schoolfleet-controller: 1 devices still hold certificates of the old CA "
            "(e.g. panel-old): wait until they renew ('ca status'), or pass "
            "--strand-devices to make them enroll again"
        )
        retired = ca(c, "retire-old", "--strand-devices")
        assert retired.code == 0, retired.err
        assert "1 devices must enroll again" in retired.out
        # The old CA's device is cut off at once, and cannot come back.
        assert stream.status() == (
            grpc.StatusCode.UNAUTHENTICATED,
            "the CA that signed this certificate is retired; the device must enroll again",
        )
        stream.__exit__(None, None, None)
        new_ca = (pki / "ca.crt").read_bytes()
        with RawStream(c.address, creds(new_ca, straggler)) as again:
            again.send(hello("panel-old", SCHOOL))
            code, _ = again.status()
        assert code == grpc.StatusCode.UNAVAILABLE  # the TLS handshake refuses its CA
        assert not (pki / "ca-next.key").exists()
        assert list((pki / "retired").iterdir())

        # The agents never went offline, lost nothing, and never waited for a backoff.
        before = {d: device_row(c.database, d) for d in ("panel-1", "panel-2")}
        for device_id, row in before.items():
            assert row is not None
            wait_until(
                partial(reporting, c, device_id, row.heartbeats_stored + 2),
                10,
                f"{device_id} reporting after the retirement",
            )
        assert silence.stop() < 2.5
        # A restarted agent reaches the controller's new server certificate (new CA).
        agents[0].stop()
        agents[0].start()
        wait_until(
            lambda: agents[0].log.read_text().count("controller link up") >= 3,
            20,
            "panel-1 back after its restart",
        )
        for agent in agents:
            row = device_row(c.database, agent.device_id)
            assert row is not None and row.seq_gaps == 0
            assert "controller link down" not in agent.log.read_text()
        log = c.log_text()
    assert "Traceback" not in log
    assert log.count("renewed certificate in use device=panel-") == 2


def trusts_two(path: Path) -> bool:
    return path.read_bytes().count(b"BEGIN CERTIFICATE") == 2


def presents(port: int, ca_pem: bytes, names: list[str]) -> bool:
    return presented_names(port, ca_pem) == names


def presented_names(port: int, ca_pem: bytes) -> list[str]:
    """The names in the certificate the controller presents to a new connection."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    context.check_hostname = False
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        cert = tls.getpeercert() or {}
    alt_names = cert.get("subjectAltName", ())
    return [str(pair[1]) for pair in alt_names if isinstance(pair, tuple)]


def test_the_server_certificate_gets_new_names_without_force(tmp_path: Path) -> None:
    with controller(tmp_path, lifetime=3600) as c, agents_of(c, "panel-s") as (agent,):
        pki = c.workdir / "data/pki"
        ca_pem = (pki / "ca.crt").read_bytes()
        assert presented_names(c.grpc_port, ca_pem) == ["127.0.0.1"]
        before = ca(c, "status", "--json").json()

        for args, error in (
            (["--name", "bad_name"], "'bad_name' is not a valid DNS name"),
            (["--address", "198.18.0.300"], "'198.18.0.300' is not an IP address"),
            (["--name", "198.18.0.1"], "'198.18.0.1' is an IP address, not a DNS name"),
        ):
            bad = ca(c, "server-cert", *args)
            assert bad.code == 2 and bad.out == "", bad
            assert bad.err.startswith(f"schoolfleet-controller: {error}")
            assert len(bad.err.strip().splitlines()) == 1

        done = ca(
            c, "server-cert", "--name", "fleet.school.test", "--address", "127.0.0.1", "--json"
        )
        assert done.code == 0, done.err
        assert (done.json()["names"], done.json()["addresses"]) == (
            ["fleet.school.test"],
            ["127.0.0.1"],
        )
        # New connections get it within the watch interval, on both ports.
        for port in (c.grpc_port, c.enroll_port):
            wait_until(
                partial(presents, port, ca_pem, ["fleet.school.test", "127.0.0.1"]),
                10,
                "the new server certificate presented",
            )
        after = ca(c, "status", "--json").json()
        # The CA is the same one; no device had to do anything.
        assert after["cas"] == before["cas"]
        count = device_row(c.database, "panel-s")
        assert count is not None
        wait_until(
            lambda: reporting(c, "panel-s", count.heartbeats_stored + 2), 10, "panel-s reporting"
        )
        # A client that knows the controller only by its new name gets in.
        channel = grpc.secure_channel(
            f"127.0.0.1:{c.enroll_port}",
            grpc.ssl_channel_credentials(ca_pem),
            options=[("grpc.ssl_target_name_override", "fleet.school.test")],
        )
        with contextlib.closing(channel):
            grpc.channel_ready_future(channel).result(timeout=10)
        assert "controller link down" not in agent.log.read_text()
    assert "Traceback" not in c.log_text()
