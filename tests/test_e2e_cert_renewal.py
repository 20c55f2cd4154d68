"""Device certificates renew themselves over the stream, and the old one stops working.

Real controller and agent processes over loopback mutual TLS, with lifetimes of
seconds: an agent renews again and again, two thirds into each certificate, and is
online throughout. A hand-driven device shows what the controller refuses.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from controller.enroll.device_certs import device_urn
from protos.schoolfleet.v1 import agent_pb2
from tests.hostile_fleet import device_row, enroll_as, seed_token
from tests.hostile_fleet import enrolled_agent as fleet_agent
from tests.hostile_pki import KeyCert, key_pem
from tests.hostile_wire import tls_channel
from tests.procs import Agent, Controller, init_controller_ca, tls_env, wait_until
from tests.raw_stream import RawStream, heartbeat, hello

pytestmark = pytest.mark.e2e

SCHOOL = "4321"


def renewing_env(data: Path, lifetime: float, spread: float = 2.0) -> dict[str, str]:
    return {
        **tls_env(data),
        "SCHOOLFLEET_CONTROLLER_DEVICE_CERT_LIFETIME": str(lifetime),
        "SCHOOLFLEET_CONTROLLER_CA_WATCH_INTERVAL": "0.3",
        "SCHOOLFLEET_CONTROLLER_CA_ROTATION_SPREAD": str(spread),
    }


@contextlib.contextmanager
def controller(tmp: Path, lifetime: float, spread: float = 2.0) -> Iterator[Controller]:
    data = tmp / "data"
    init_controller_ca(data)
    c = Controller(tmp, env=renewing_env(data, lifetime, spread))
    try:
        yield c.start()
    finally:
        c.stop()


def enrolled_agent(c: Controller, device_id: str) -> Agent:
    return fleet_agent(c, device_id, SCHOOL, c.workdir / "data/pki")


def read(database: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        return db.execute(sql, params).fetchall()


def serial(database: Path, device_id: str) -> str:
    rows = read(database, "SELECT serial FROM enrollments WHERE device_id = ?", device_id)
    return str(rows[0][0]) if rows else ""


def audit(database: Path, device_id: str) -> list[tuple[str, str]]:
    rows = read(
        database,
        "SELECT outcome, message FROM audit WHERE action = 'renew' AND target = ? "
        "ORDER BY entry_id",
        device_id,
    )
    return [(str(o), str(m)) for o, m in rows]


@dataclass
class Watch:
    """What sampling the store every 0.1 s saw of one device."""

    serials: list[str]
    # Longest time the device went without a stored heartbeat, and how often the store
    # showed no stream for it.
    longest_silence: float
    streamless: int


def watch(database: Path, device_id: str, seconds: float) -> Watch:
    serials: list[str] = []
    longest = 0.0
    streamless = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        rows = read(
            database,
            "SELECT e.serial, d.last_heartbeat, d.stream_id FROM enrollments e "
            "JOIN devices d USING (device_id) WHERE device_id = ?",
            device_id,
        )
        current, last_heartbeat, stream_id = rows[0]
        if not serials or serials[-1] != current:
            serials.append(str(current))
        longest = max(longest, time.time() - float(last_heartbeat))  # type: ignore[arg-type]
        streamless += stream_id == 0
        time.sleep(0.1)
    return Watch(serials, longest, streamless)


@pytest.mark.slow
def test_an_agent_renews_again_and_again_and_stays_online(tmp_path: Path) -> None:
    # 6 s certificates: renewed about every 4 s.
    with controller(tmp_path, lifetime=6) as c:
        agent = enrolled_agent(c, "panel-r")
        try:
            wait_until(
                lambda: (row := device_row(c.database, "panel-r")) and row.heartbeats_stored >= 2,
                30,
                "panel-r enrolled and reporting",
            )
            seen = watch(c.database, "panel-r", 20)
            log = agent.log.read_text()
        finally:
            agent.stop()
        row = device_row(c.database, "panel-r")
    # At least three renewals, each a new serial the controller recorded.
    assert len(seen.serials) >= 4, seen
    assert log.count("certificate renewed device=panel-r") >= 3
    # Online throughout: a heartbeat stored at least every 2.5 s (1 s interval), none
    # lost or repeated, and the link never waited for a backoff.
    assert seen.longest_silence < 2.5, seen
    assert row is not None and row.seq_gaps == 0 and row.last_seq == row.heartbeats_stored
    assert "controller link down" not in log, log
    # Each switch is one replaced stream, the new one opened at once.
    controller_log = c.log_text()
    assert controller_log.count("renewed certificate in use device=panel-r") >= 3
    assert "Traceback" not in controller_log and "Traceback" not in log
    # The private key never left the device: what the controller logged and audited
    # are serials, and the device's key file is its own.
    key = (tmp_path / "tls-panel-r/device.key").read_bytes()
    assert key.splitlines()[1].decode() not in controller_log
    assert oct((tmp_path / "tls-panel-r/device.key").stat().st_mode & 0o777) == "0o600"
    assert all(outcome == "ok" for outcome, _ in audit(c.database, "panel-r"))


# --- a hand-driven device -------------------------------------------------------------------


def csr(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    names: list[x509.NameAttribute[str]] | None = None,
    extensions: list[x509.ExtensionType] | None = None,
) -> bytes:
    from cryptography.hazmat.primitives import serialization

    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(names or []))
    for extension in extensions or []:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def creds(ca: bytes, client: KeyCert) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(ca, client.key, client.cert)


def renew(stream: RawStream, csr_pem: bytes) -> agent_pb2.RenewResponse:
    stream.send(agent_pb2.AgentMessage(renew_request=agent_pb2.RenewRequest(csr_pem=csr_pem)))
    while (message := stream.next()).WhichOneof("body") != "renew_response":
        pass
    return message.renew_response


def test_a_device_renews_only_itself_with_a_new_strong_key_and_the_old_one_is_refused(
    tmp_path: Path,
) -> None:
    with controller(tmp_path, lifetime=3600) as c:
        ca = (c.workdir / "data/pki/ca.crt").read_bytes()
        with contextlib.closing(tls_channel(c.enroll_port, ca)) as enroll:
            old = enroll_as(enroll, seed_token(c.database, SCHOOL), "panel-x")
            enroll_as(enroll, seed_token(c.database, SCHOOL), "panel-y")
        old_serial = serial(c.database, "panel-x")
        current_key = x509.load_pem_x509_certificate(old.cert).public_key()
        cn = x509.NameAttribute(NameOID.COMMON_NAME, "panel-x")
        new_key = ec.generate_private_key(ec.SECP256R1())
        hostile = {
            "another device": csr(new_key, [x509.NameAttribute(NameOID.COMMON_NAME, "panel-y")]),
            "another school": csr(
                new_key, [cn, x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "9999")]
            ),
            "another device's URI": csr(
                new_key,
                [cn],
                [
                    x509.SubjectAlternativeName(
                        [x509.UniformResourceIdentifier(device_urn(SCHOOL, "panel-y"))]
                    )
                ],
            ),
            "a CA's extension": csr(
                new_key, [cn], [x509.BasicConstraints(ca=True, path_length=None)]
            ),
            # What the controller must refuse, so made here on purpose.
            "a weak RSA key": csr(rsa.generate_private_key(65537, 1024), [cn]),  # noqa: S505
            "another curve": csr(ec.generate_private_key(ec.SECP256K1()), [cn]),
            # The device's own key, which only it holds: a renewal must bring a new one.
            "the current key": _csr_with_key_of(old),
            "not a CSR": b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n",
        }
        assert isinstance(current_key, ec.EllipticCurvePublicKey)
        expected = {
            "another device": "the certificate request names device 'panel-y'; a device may "
            "renew only its own certificate",
            "another school": "the certificate request names school '9999', not this "
            "device's school",
            "another device's URI": "the certificate request names "
            f"{device_urn(SCHOOL, 'panel-y')}; its only alternative name may be this "
            f"device's own, {device_urn(SCHOOL, 'panel-x')}",
            "a CA's extension": "the certificate request asks for extension basicConstraints, "
            "which it may not",
            "a weak RSA key": "the certificate request's key must be EC P-256 or RSA of at "
            "least 2048 bits",
            "another curve": "the certificate request's key must be EC P-256 or RSA of at "
            "least 2048 bits",
            "the current key": "the certificate request has the device's current key: make "
            "a new one",
            "not a CSR": "the certificate request is not a readable PEM CSR",
        }
        with RawStream(c.address, creds(ca, old)) as stream:
            stream.send(hello("panel-x", SCHOOL))
            assert stream.next().WhichOneof("body") == "welcome"
            for what, request in hostile.items():
                answer = renew(stream, request)
                assert (answer.refused, answer.certificate_pem) == (expected[what], b""), what
            # The stream is still up, and a good request now gets a certificate.
            stream.send(heartbeat(1))
            granted = renew(stream, csr(new_key, [cn]))
            assert granted.refused == "" and granted.certificate_pem
            again = renew(stream, csr(ec.generate_private_key(ec.SECP256R1()), [cn]))
            assert again.refused == (
                "one renewal per stream: connect with the renewed certificate before asking again"
            )
            # Until the device uses its new certificate, the old one still counts.
            assert serial(c.database, "panel-x") == old_serial
            renewed = KeyCert(key_pem(new_key), granted.certificate_pem)
            new_serial = f"{x509.load_pem_x509_certificate(renewed.cert).serial_number:x}"
            with RawStream(c.address, creds(ca, renewed)) as switched:
                switched.send(hello("panel-x", SCHOOL))
                assert switched.next().WhichOneof("body") == "welcome"
                # The new stream replaced the old one, and the store moved to the new serial.
                assert stream.status()[0] == grpc.StatusCode.ABORTED
                assert serial(c.database, "panel-x") == new_serial
                # The old certificate is refused from now on.
                with RawStream(c.address, creds(ca, old)) as replay:
                    replay.send(hello("panel-x", SCHOOL))
                    code, details = replay.status()
                assert (code, details) == (
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"certificate {old_serial} is not device panel-x's current one "
                    "(it was renewed or enrolled again since)",
                )
                # A device that keeps asking is cut off: each refusal costs a log line
                # and an audit entry.
                for _ in range(10):
                    assert renew(switched, b"junk").refused
                switched.send(
                    agent_pb2.AgentMessage(renew_request=agent_pb2.RenewRequest(csr_pem=b"junk"))
                )
                assert switched.status() == (
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "more than 10 renewal requests on one stream",
                )
        log = c.log_text()
        entries = audit(c.database, "panel-x")
    # Every refusal is one log line and one audit entry naming what was wrong.
    assert [o for o, _ in entries] == ["denied"] * len(hostile) + ["ok"] + ["denied"] * 11
    assert [m for _, m in entries[: len(hostile)]] == list(expected.values())
    assert log.count("renewal refused device=panel-x") == len(hostile) + 11
    assert "renewal requests over the limit device=panel-x requests=11" in log
    assert f"certificate renewed device=panel-x school={SCHOOL} serial={new_serial}" in log
    assert "Traceback" not in log


def _csr_with_key_of(client: KeyCert) -> bytes:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(client.key, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return csr(key, [x509.NameAttribute(NameOID.COMMON_NAME, "panel-x")])
