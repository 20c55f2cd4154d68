"""An atheris target over the checks the controller applies to what devices send.

Run by tests/test_hostile_streams.py as ``python tests/fuzz_protos.py CORPUS -runs=N``
(any libFuzzer flags work). The first byte of an input picks what the rest is:

0. an AgentMessage as Connect reads it: the controller's own decoder (size limit,
   parse, range checks), then the checks its stream applies to each kind of body;
1. an EnrollRequest as Enroll reads it: the id check, the token's hash, and the
   CSR signed (``sign_device_csr``, as Enroll does) by a CA made for the run;
2. the URI names of a client certificate, one a line, as the TLS layer hands them.

Each may refuse its input with the errors it documents (DecodeError, ProtocolError,
PkiError); any other exception is a bug, and atheris stops with the input that
caused it. An empty CORPUS folder is seeded with one valid input of each kind.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris
from atheris.import_hook import instrument_imports

# Third-party code is imported first, so that only our own modules are instrumented
# (instrumenting all of grpc and cryptography would take longer than the fuzzing).
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf.message import DecodeError

from protos.schoolfleet.v1 import agent_pb2, fleet_pb2

with instrument_imports(include=["controller", "inventory", "wire.mapping"]):
    from common.secret_hash import hash_secret
    from controller.api.convert import health_from_pb, identity_from_hello, report_from_pb
    from controller.api.request_checks import decode
    from controller.enroll.device_certs import device_urn, identity_from_uris, sign_device_csr
    from controller.enroll.pki import init_ca, load_ca
    from controller.errors import PkiError, ProtocolError
    from inventory.model import valid_id

MAX_BYTES = 64 * 1024
with tempfile.TemporaryDirectory(prefix="fuzz-ca-") as _ca_dir:
    init_ca(Path(_ca_dir) / "pki", ["fuzz.test"], [])
    CA = load_ca(Path(_ca_dir) / "pki")


def _agent_message(data: bytes) -> None:
    try:
        message = decode(data, MAX_BYTES)
        body = message.WhichOneof("body")
        if body == "hello":
            identity_from_hello(message.hello)
        elif body == "heartbeat":
            health_from_pb(message.heartbeat.health)
            report_from_pb(message.heartbeat)
    except (DecodeError, ProtocolError):
        pass


def _enroll_request(data: bytes) -> None:
    try:
        request = agent_pb2.EnrollRequest.FromString(data)
    except DecodeError:
        return
    hash_secret(request.token)
    if not valid_id(request.device_id):
        return
    try:
        issued = sign_device_csr(CA, request.csr_pem, request.device_id, "school-1")
    except PkiError:
        return
    cert = x509.load_pem_x509_certificate(issued.pem)
    assert cert.issuer == CA.certificate.subject


def _uris(data: bytes) -> None:
    uris = [line.decode(errors="replace") for line in data.split(b"\n")]
    try:
        device_id, school_id = identity_from_uris(uris)
    except PkiError:
        return
    # What is accepted is exactly what this CA would write for that device.
    assert device_urn(school_id, device_id) in uris


TARGETS = (_agent_message, _enroll_request, _uris)


def test_one_input(data: bytes) -> None:
    if data:
        TARGETS[data[0] % len(TARGETS)](data[1:])


def _seeds() -> list[bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    hello = agent_pb2.AgentMessage(
        hello=agent_pb2.Hello(device_id="panel-1", kind=fleet_pb2.DEVICE_KIND_PANEL, school_id="s1")
    )
    beat = agent_pb2.AgentMessage(
        seq=1,
        heartbeat=agent_pb2.Heartbeat(
            health=fleet_pb2.Health(cpu_percent=5, load1=0.5),
            condition=fleet_pb2.CONDITION_DEGRADED,
            reasons=["disk / at 93%"],
        ),
    )
    enroll = agent_pb2.EnrollRequest(token="sfe_x", csr_pem=csr, device_id="panel-1")  # noqa: S106
    return [
        b"\x00" + hello.SerializeToString(),
        b"\x00" + beat.SerializeToString(),
        b"\x01" + enroll.SerializeToString(),
        b"\x02" + device_urn("s1", "panel-1").encode() + b"\nhttps://example.test",
    ]


def main() -> None:
    corpus = next((Path(a) for a in sys.argv[1:] if not a.startswith("-")), None)
    if corpus is not None and corpus.is_dir() and not any(corpus.iterdir()):
        for i, seed in enumerate(_seeds()):
            (corpus / f"seed-{i}").write_bytes(seed)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
