"""Enrollment on the device: a key made here, a CSR, and the certificate the CA returns.

The private key is generated on the device and never leaves it (0600 in
``cert_dir``); only the certificate request goes to the controller, with the
school's enrollment token. cryptography is imported here only, and only when a
device has no certificate yet, so the running agent does not carry it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from agent.cert_tool import finish
from agent.errors import EnrollUnreachable
from agent.settings import AgentSettings
from protos.schoolfleet.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger(__name__)

KEY_FILE, CERT_FILE, CA_FILE = "device.key", "device.crt", "ca.crt"
_ENROLL_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Credentials:
    """Where the device's key, certificate and the controller's CA certificate are."""

    key: Path
    cert: Path
    ca: Path


def credentials(cert_dir: Path) -> Credentials:
    """The paths in ``cert_dir``."""
    return Credentials(cert_dir / KEY_FILE, cert_dir / CERT_FILE, cert_dir / CA_FILE)


def ensure_enrolled(settings: AgentSettings) -> Credentials | None:
    """The device's credentials, enrolling first if it has none and a token is set.

    Returns None (and logs why) when the device has no certificate and the controller
    refused one; raises EnrollUnreachable when it could not be asked.
    """
    creds = credentials(settings.cert_dir)
    if finish(settings.cert_dir):
        log.info("renewed certificate put in place after an interruption cert=%s", creds.cert)
    if creds.cert.exists() and creds.key.exists():
        return creds
    if settings.ca_cert != Path() and not settings.enroll_controller:
        log.error("ca_cert is set but enroll_controller is not: cannot enroll over TLS")
        return None
    if not settings.enroll_token:
        log.info("no certificate and no enroll_token: not enrolled cert_dir=%s", settings.cert_dir)
        return None
    try:
        key_pem, csr_pem = key_and_csr(settings.device_id)
        response = _enroll(settings, csr_pem)
        _save(settings.cert_dir, key_pem, response)
    except grpc.RpcError as exc:
        call: grpc.Call = exc  # type: ignore[assignment]
        where = settings.enroll_controller or settings.controller
        if call.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise EnrollUnreachable(
                f"enrollment: controller {where} not reachable ({call.code().name})"
            ) from None
        log.error(
            "enrollment refused controller=%s code=%s reason=%s",
            where,
            call.code().name,
            call.details(),
        )
        return None
    except OSError as exc:
        log.error("certificate not saved cert_dir=%s reason=%s", settings.cert_dir, exc)
        return None
    log.info("enrolled device=%s cert=%s", settings.device_id, creds.cert)
    return creds


def key_and_csr(device_id: str) -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


def message_limits(settings: AgentSettings) -> list[tuple[str, int]]:
    """Channel options with explicit size limits, as on the agent's stream (gRPC's
    default would send a message of any size)."""
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
    ]


def _enroll(settings: AgentSettings, csr_pem: bytes) -> agent_pb2.EnrollResponse:
    options = message_limits(settings)
    if settings.ca_cert != Path():
        # The controller proves who it is with the CA the device was given.
        tls = grpc.ssl_channel_credentials(root_certificates=settings.ca_cert.read_bytes())
        address = settings.enroll_controller or settings.controller
        channel = grpc.secure_channel(address, tls, options=options)
    else:
        channel = grpc.insecure_channel(settings.controller, options=options)
    with channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        request = agent_pb2.EnrollRequest(
            token=settings.enroll_token, csr_pem=csr_pem, device_id=settings.device_id
        )
        response: agent_pb2.EnrollResponse = stub.Enroll(request, timeout=_ENROLL_TIMEOUT)
        return response


def _save(cert_dir: Path, key_pem: bytes, response: agent_pb2.EnrollResponse) -> None:
    cert_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    # The key first, and the certificate last: a certificate on disk means all is there.
    write_file(cert_dir / KEY_FILE, key_pem, 0o600)
    write_file(cert_dir / CA_FILE, response.ca_certificate_pem, 0o644)
    write_file(cert_dir / CERT_FILE, response.certificate_pem, 0o644)


def write_file(path: Path, data: bytes, mode: int) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
