"""Hostile identities and garbage at the controller's ports: nobody gets in.

Certificates that are expired, not valid yet, self-signed, signed by a look-alike of
the CA, made for servers, or that name no device (or no device clearly); a real
device certificate that claims to be another device; enrollment tokens used up,
expired, revoked, misspelled or replayed by many at once, and good tokens with bad
certificate requests; raw garbage and silent connections at both TCP ports. Each is
refused without issuing or storing anything, and the good device of
tests/hostile_fleet.py goes on unharmed.
"""

from __future__ import annotations

import datetime as dt
import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from cryptography import x509

from controller.enroll.device_certs import device_identity, device_urn
from protos.schoolfleet.v1 import agent_pb2
from tests.hostile_fleet import (
    FUZZ,
    GOOD,
    NOBODYS,
    SCHOOL,
    Fleet,
    assert_unharmed,
    enrolled,
    hello_from,
    seed_token,
    serialized,
    start_fleet,
    token_uses,
)
from tests.hostile_pki import (
    KeyCert,
    certificate,
    csr_of_version,
    csr_pem,
    look_alike_ca,
    new_key,
    self_signed,
    tampered_csr,
)
from tests.hostile_wire import (
    DENIED,
    ENROLL,
    HTTP1_REQUEST,
    HTTP2_PREFACE,
    INVALID,
    UNAUTHENTICATED,
    UNAVAILABLE,
    client_hello,
    poke,
    silent_connections,
    stream,
    unary,
    unary_methods,
)
from tests.raw_stream import heartbeat

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with start_fleet(tmp_path_factory.mktemp("hostile-trust")) as fleet:
        yield fleet


@pytest.fixture(autouse=True)
def _log_from(fleet: Fleet) -> None:
    """Each test answers for what the controller logged while it ran."""
    fleet.log_from = len(fleet.controller.log_text())


# --- 1. certificates ----------------------------------------------------------------------


def _enroll_request(device_id: str = "panel-m", **fields: object) -> bytes:
    return agent_pb2.EnrollRequest(
        token=NOBODYS, device_id=device_id, csr_pem=csr_pem(), **fields
    ).SerializeToString()


def _connect_as(
    fleet: Fleet, client: KeyCert | None, device_id: str
) -> tuple[grpc.StatusCode, str]:
    with fleet.mutual(client) as channel:
        return stream(channel, serialized(hello_from(device_id), heartbeat(10**9)))


def test_expired_forged_and_nameless_certificates_are_refused(fleet: Fleet) -> None:
    ca = fleet.ca
    urn = device_urn(SCHOOL, GOOD)
    now = dt.datetime.now(dt.UTC)
    look_alike = look_alike_ca(ca)
    pki = fleet.controller.workdir / "data/pki"
    # Refused in the TLS handshake: the client sees UNAVAILABLE, the handler never runs.
    handshake_refusals: dict[str, KeyCert] = {
        "expired, from the right CA": certificate(
            ca.certificate.subject,
            ca.key,
            [urn],
            not_before=now - dt.timedelta(days=30),
            not_after=now - dt.timedelta(days=1),
        ),
        "not valid yet, from the right CA": certificate(
            ca.certificate.subject, ca.key, [urn], not_before=now + dt.timedelta(days=1)
        ),
        "self-signed with the device's URN": self_signed(urn),
        "signed by a look-alike of the CA": certificate(*look_alike, [urn]),
        # The CA's, but made for servers (no clientAuth): the controller's own.
        "the controller's server certificate": KeyCert(
            (pki / "server.key").read_bytes(), (pki / "server.crt").read_bytes()
        ),
    }
    for name, client in handshake_refusals.items():
        code, details = _connect_as(fleet, client, GOOD)
        assert code == UNAVAILABLE, f"{name}: {code} {details}"
    # The handshake passes, but the certificate names no one (or no one clearly).
    nameless: dict[str, list[str]] = {
        "no subject alternative name": [],
        "a URI that is not a device's": ["https://example.test/panel-good"],
        "two device URNs": [urn, device_urn(SCHOOL, FUZZ)],
        "a URN with a third part": [f"{urn}:extra"],
        "a URN in another spelling": [urn.replace("panel-good", "panel%2Dgood")],
    }
    for name, uris in nameless.items():
        client = certificate(ca.certificate.subject, ca.key, uris)
        code, details = _connect_as(fleet, client, GOOD)
        assert (code, details) == (
            UNAUTHENTICATED,
            "a client certificate from this controller's CA is required",
        ), name
    # Without a certificate nothing on the mutual-TLS port is reachable, not even Enroll.
    with fleet.mutual(None) as channel:
        for path in unary_methods()[:2]:
            code, details, _ = unary(channel, path, _enroll_request())
            assert code == UNAVAILABLE, f"{path}: {code} {details}"
    assert_unharmed(fleet)


def test_a_real_certificate_cannot_speak_for_the_good_device(fleet: Fleet) -> None:
    code, details = stream(fleet.device, serialized(hello_from(GOOD), heartbeat(10**9)))
    assert (code, details) == (
        DENIED,
        f"the certificate is for device {FUZZ}, Hello says {GOOD}",
    )
    # Its heartbeat, numbered far ahead, went nowhere: no gap opened in the good
    # device's sequence (checked below) and its stream stayed up.
    assert_unharmed(fleet)


# --- 2. enrollment tokens -----------------------------------------------------------------


def _enroll(fleet: Fleet, secret: str, device_id: str) -> tuple[grpc.StatusCode, str, bytes]:
    request = agent_pb2.EnrollRequest(token=secret, device_id=device_id, csr_pem=csr_pem())
    return unary(fleet.enroll, ENROLL, request.SerializeToString())


def test_a_token_used_up_expired_or_revoked_issues_nothing(fleet: Fleet) -> None:
    db = fleet.database
    secret = seed_token(db, SCHOOL)
    code, details, response = _enroll(fleet, secret, "panel-r1")
    assert code == grpc.StatusCode.OK, details
    issued = agent_pb2.EnrollResponse.FromString(response)
    cert = x509.load_pem_x509_certificate(issued.certificate_pem)
    cert.verify_directly_issued_by(fleet.ca.certificate)
    assert device_identity(cert) == ("panel-r1", SCHOOL)

    refused = "the enrollment token is not valid (unknown, used up, expired or revoked)"
    for device_id in ("panel-r1", "panel-r2"):
        assert _enroll(fleet, secret, device_id) == (DENIED, refused, b"")
    assert token_uses(db, secret) == (1, 0)

    hour_ago = time.time() - 7200
    others = {
        "expired": seed_token(db, SCHOOL, uses=5, now=hour_ago),
        "revoked": seed_token(db, SCHOOL, uses=5, revoked=True),
        "another case": secret.upper(),
        "with a newline": secret + "\n",
        "only its id": secret[:12],
    }
    for name, other in others.items():
        assert _enroll(fleet, other, "panel-r3") == (DENIED, refused, b""), name
    assert token_uses(db, others["expired"]) == (0, 5)
    assert token_uses(db, others["revoked"]) == (0, 5)
    assert enrolled(db, ["panel-r1", "panel-r2", "panel-r3"]) == {"panel-r1"}
    assert_unharmed(fleet)


def test_a_token_replayed_at_once_by_many_enrolls_one(fleet: Fleet) -> None:
    secret = seed_token(fleet.database, SCHOOL)
    devices = [f"panel-race{i}" for i in range(8)]
    with ThreadPoolExecutor(len(devices)) as pool:
        codes = list(pool.map(lambda d: _enroll(fleet, secret, d)[0], devices))
    assert sorted(c.name for c in codes) == ["OK"] + ["PERMISSION_DENIED"] * 7
    assert len(enrolled(fleet.database, devices)) == 1
    assert token_uses(fleet.database, secret) == (1, 0)
    assert_unharmed(fleet)


def test_a_bad_request_with_a_good_token_uses_none_of_it(fleet: Fleet) -> None:
    secret = seed_token(fleet.database, SCHOOL, uses=3)
    p384 = csr_pem(new_key(curve="P-384"))
    tampered = tampered_csr()
    for name, csr, words in [
        ("a P-384 key", p384, "must be EC P-256"),
        ("a signature that does not verify", tampered, "signature does not verify"),
        ("a certificate instead of a CSR", fleet.ca_pem, "not a readable PEM CSR"),
        # Found by the atheris target: cryptography's InvalidVersion is no ValueError.
        ("a CSR of version 5", csr_of_version(4), "not a readable PEM CSR"),
        (
            "60 KiB of PEM armour",
            b"-----BEGIN CERTIFICATE REQUEST-----\n" + b"A" * 60_000,
            "not a readable PEM CSR",
        ),
    ]:
        request = agent_pb2.EnrollRequest(token=secret, device_id="panel-csr", csr_pem=csr)
        code, details, _ = unary(fleet.enroll, ENROLL, request.SerializeToString())
        assert (code, words in details) == (INVALID, True), f"{name}: {code} {details}"
    assert token_uses(fleet.database, secret) == (0, 3)
    assert enrolled(fleet.database, ["panel-csr"]) == set()
    assert_unharmed(fleet)


# --- 3. garbage at the TCP ports ----------------------------------------------------------


def test_garbage_bytes_at_both_ports_harm_nobody(fleet: Fleet) -> None:
    rng = random.Random(20261123)
    hello_record = client_hello()
    garbage = {
        "random bytes": rng.randbytes(4096),
        "an HTTP/1.1 request": HTTP1_REQUEST,
        "an HTTP/2 preface in the clear": HTTP2_PREFACE + rng.randbytes(64),
        "a truncated ClientHello": hello_record[: len(hello_record) // 2],
        "a ClientHello and then garbage": hello_record + rng.randbytes(512),
        "a TLS record header claiming 16 MiB": b"\x16\x03\x01\xff\xff" + rng.randbytes(100),
    }
    c = fleet.controller
    for port in (c.grpc_port, c.enroll_port):
        with silent_connections(port, 20):
            for name, data in garbage.items():
                answer = poke(port, data)
                # Nothing in the clear ever comes back, least of all a traceback.
                assert b"Traceback" not in answer and b"HTTP/1.1 200" not in answer, name
            # With silent connections still open, both ports serve as before.
            code, details, _ = unary(fleet.enroll, ENROLL, b"\x1a\x80")
            assert code == INVALID, details
            assert stream(fleet.device, serialized(hello_from())) == (grpc.StatusCode.OK, "")
            assert_unharmed(fleet)
