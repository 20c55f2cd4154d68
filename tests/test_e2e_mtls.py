"""Mutual TLS: an enrolled agent is who its certificate says; nobody else gets in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from controller.enroll.device_certs import sign_device_csr
from controller.enroll.pki import init_ca, load_ca
from protos.schoolfleet.v1 import agent_pb2, agent_pb2_grpc
from tests.procs import (
    Agent,
    Controller,
    Result,
    free_port,
    init_controller_ca,
    schoolctl,
    tls_env,
    wait_until,
)
from tests.raw_stream import RawStream, hello

pytestmark = pytest.mark.e2e


@pytest.fixture
def tls_controller(tmp_path: Path) -> Iterator[Controller]:
    data = tmp_path / "data"
    init_controller_ca(data)
    c = Controller(tmp_path, env=tls_env(data))
    try:
        yield c.start()
    finally:
        c.stop()


def _ctl(c: Controller, *args: str) -> Result:
    return schoolctl(
        f"127.0.0.1:{c.enroll_port}", "--ca-cert", str(c.workdir / "data/pki/ca.crt"), *args
    )


def _key_cert(ca_dir: Path, device_id: str, school_id: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    cert = sign_device_csr(load_ca(ca_dir), csr, device_id, school_id).pem
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem, cert


def _refusal(address: str, ca: bytes, key: bytes | None, cert: bytes | None, device: str) -> str:
    """What a raw stream gets: the status code's name and its details."""
    creds = grpc.ssl_channel_credentials(ca, key, cert)
    with RawStream(address, credentials=creds) as stream:
        stream.send(hello(device))
        code, details = stream.status()
    return f"{code.name}: {details}"


def test_an_enrolled_agent_streams_over_mutual_tls(
    tls_controller: Controller, agents: list[Agent]
) -> None:
    c = tls_controller
    created = _ctl(c, "enroll", "token", "create", "--school", "1234")
    assert created.code == 0, created.err
    agent = Agent(
        c.workdir,
        "panel-t",
        "panel",
        # Hello claims another school: the certificate's (the token's) is what counts.
        "9999",
        "r1",
        c.address,
        extra={
            "enroll_token": created.out.strip(),
            "ca_cert": str(c.workdir / "data/pki/ca.crt"),
            "enroll_controller": f"127.0.0.1:{c.enroll_port}",
        },
    ).start()
    agents.append(agent)

    def online() -> dict[str, object] | None:
        done = _ctl(c, "devices", "show", "panel-t", "--json")
        device: dict[str, object] | None = done.json() if done.code == 0 else None
        return device if device and device["status"] == "online" else None

    device = wait_until(online, 30, "panel-t online over mTLS")
    assert device["school_id"] == "1234"
    assert "enrolled device=panel-t" in agent.log.read_text()
    # Plain schoolctl cannot talk to a TLS controller; it says so in one line.
    plain = schoolctl(f"127.0.0.1:{c.enroll_port}", "status")
    assert plain.code == 3 and "Traceback" not in plain.err


def test_no_certificate_a_foreign_one_or_someone_elses_name_is_refused(
    tls_controller: Controller, tmp_path: Path
) -> None:
    c = tls_controller
    pki = c.workdir / "data/pki"
    ca = (pki / "ca.crt").read_bytes()
    key, cert = _key_cert(pki, "panel-1", "1234")
    foreign = tmp_path / "foreign"
    init_ca(foreign, ["foreign.test"], [])
    f_key, f_cert = _key_cert(foreign, "panel-1", "1234")

    # Without a client certificate the TLS handshake itself fails on the agent port.
    assert _refusal(c.address, ca, None, None, "panel-1").startswith("UNAVAILABLE")
    # A certificate from another CA: the same.
    assert _refusal(c.address, ca, f_key, f_cert, "panel-1").startswith("UNAVAILABLE")
    # The enrollment port takes no client certificate, so no stream there either.
    refused = _refusal(f"127.0.0.1:{c.enroll_port}", ca, None, None, "panel-1")
    assert refused.startswith("UNAUTHENTICATED") and "client certificate" in refused
    # A good certificate cannot claim another device's id.
    refused = _refusal(c.address, ca, key, cert, "panel-2")
    assert refused == "PERMISSION_DENIED: the certificate is for device panel-1, Hello says panel-2"
    assert "Traceback" not in c.log_text()


def test_an_agent_waits_for_an_unreachable_controller_to_enroll(
    tmp_path: Path, agents: list[Agent]
) -> None:
    data = tmp_path / "data"
    init_controller_ca(data)
    enroll_port = free_port()
    controller = Controller(
        tmp_path, free_port(), tls_env(data, f"127.0.0.1:{enroll_port}")
    ).start()
    try:
        token = _ctl(controller, "enroll", "token", "create", "--school", "1234").out.strip()
        controller.stop()
        agent = Agent(
            tmp_path,
            "panel-w",
            "panel",
            "1234",
            "r1",
            controller.address,
            extra={
                "enroll_token": token,
                "ca_cert": str(data / "pki/ca.crt"),
                "enroll_controller": f"127.0.0.1:{enroll_port}",
            },
        ).start()
        agents.append(agent)
        wait_until(
            lambda: agent.log.read_text().count("not reachable (UNAVAILABLE); retry_in=") >= 2,
            20,
            "the agent retrying its enrollment",
        )
        controller.start()

        def online() -> bool:
            done = _ctl(controller, "devices", "show", "panel-w", "--json")
            return done.code == 0 and done.json()["status"] == "online"

        wait_until(online, 30, "panel-w enrolled and online once the controller is back")
        assert agent.log.read_text().count("enrolled device=panel-w") == 1
    finally:
        controller.stop()


def _enrolled(c: Controller, device_id: str, school: str) -> tuple[bytes, bytes]:
    """A key made here and the certificate the controller's Enroll gives for it."""
    ca = (c.workdir / "data/pki/ca.crt").read_bytes()
    token = _ctl(c, "enroll", "token", "create", "--school", school).out.strip()
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    tls = grpc.ssl_channel_credentials(ca)
    with grpc.secure_channel(f"127.0.0.1:{c.enroll_port}", tls) as channel:
        request = agent_pb2.EnrollRequest(token=token, csr_pem=csr, device_id=device_id)
        response = agent_pb2_grpc.AgentServiceStub(channel).Enroll(request, timeout=10)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem, response.certificate_pem


def _welcomed(c: Controller, key: bytes, cert: bytes, device: str) -> bool:
    ca = (c.workdir / "data/pki/ca.crt").read_bytes()
    creds = grpc.ssl_channel_credentials(ca, key, cert)
    with RawStream(c.address, credentials=creds) as stream:
        stream.send(hello(device))
        return stream.next().HasField("welcome")


def test_a_certificate_replaced_by_a_new_enrollment_is_refused(
    tls_controller: Controller,
) -> None:
    c = tls_controller
    old_key, old_cert = _enrolled(c, "panel-r", "1234")
    assert _welcomed(c, old_key, old_cert, "panel-r")

    # The panel's disk is replaced: it is allowed to enroll again and gets a new key.
    assert _ctl(c, "devices", "reenroll", "panel-r").code == 0
    new_key, new_cert = _enrolled(c, "panel-r", "1234")
    assert _welcomed(c, new_key, new_cert, "panel-r")

    # The old disk's key, still signed by the CA, is no way back in.
    serial = f"{x509.load_pem_x509_certificate(old_cert).serial_number:x}"
    refused = _refusal(
        c.address, (c.workdir / "data/pki/ca.crt").read_bytes(), old_key, old_cert, "panel-r"
    )
    assert refused == (
        f"PERMISSION_DENIED: certificate {serial} is not device panel-r's current one "
        "(it was renewed or enrolled again since)"
    )
    assert "reason=replaced_certificate" in c.log_text()
    assert c.metrics()['schoolfleet_streams_closed_total{reason="replaced_certificate"}'] == 1


def test_a_decommissioned_devices_certificate_is_refused(tls_controller: Controller) -> None:
    c = tls_controller
    key, cert = _enrolled(c, "panel-z", "1234")
    assert _welcomed(c, key, cert, "panel-z")
    assert _ctl(c, "devices", "decommission", "panel-z", "--yes").code == 0
    ca = (c.workdir / "data/pki/ca.crt").read_bytes()
    assert _refusal(c.address, ca, key, cert, "panel-z") == (
        "PERMISSION_DENIED: device panel-z is decommissioned; "
        "it must be allowed to re-enroll and enroll"
    )
