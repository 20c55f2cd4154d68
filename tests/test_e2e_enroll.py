"""AgentService.Enroll: a token and a CSR become a device certificate from the CA."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from controller.enroll.device_certs import device_identity
from protos.schoolfleet.v1 import agent_pb2, agent_pb2_grpc
from tests.procs import Agent, Controller, init_controller_ca, schoolctl, wait_until

pytestmark = pytest.mark.e2e


def _csr(cn: str = "asks-to-be-someone-else") -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def ca_controller(tmp_path: Path) -> Iterator[Controller]:
    data = tmp_path / "data"
    init_controller_ca(data)
    c = Controller(tmp_path, env={"SCHOOLFLEET_CONTROLLER_DATA_DIR": str(data)})
    try:
        yield c.start()
    finally:
        c.stop()


def _enroll(address: str, token: str, device_id: str, csr: bytes) -> agent_pb2.EnrollResponse:
    with grpc.insecure_channel(address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        request = agent_pb2.EnrollRequest(token=token, csr_pem=csr, device_id=device_id)
        response: agent_pb2.EnrollResponse = stub.Enroll(request, timeout=10)
        return response


def _refused(address: str, token: str, device_id: str, csr: bytes) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        _enroll(address, token, device_id, csr)
    error: grpc.Call = caught.value  # type: ignore[assignment]
    return error.code(), error.details() or ""


def _token(address: str, *args: str) -> str:
    created = schoolctl(address, "enroll", "token", "create", *args)
    assert created.code == 0, created.err
    return created.out.strip()


def _uses_left(address: str) -> dict[str, int]:
    listed = schoolctl(address, "enroll", "token", "list", "--json").json()
    return {t["token_id"]: t["uses_left"] for t in listed}


def test_a_token_and_a_csr_make_a_certificate_naming_the_device_and_school(
    ca_controller: Controller, tmp_path: Path
) -> None:
    address = ca_controller.address
    token = _token(address, "--school", "1234", "--uses", "2")
    got = _enroll(address, token, "panel-e1", _csr())
    cert = x509.load_pem_x509_certificate(got.certificate_pem)
    ca = x509.load_pem_x509_certificate(got.ca_certificate_pem)
    assert got.ca_certificate_pem == (tmp_path / "data/pki/ca.crt").read_bytes()
    cert.verify_directly_issued_by(ca)
    # The CSR asked for another name: the certificate says who the token and id say.
    assert device_identity(cert) == ("panel-e1", "1234")

    # The same device again: refused, and the token keeps its use.
    code, details = _refused(address, token, "panel-e1", _csr())
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert "schoolctl devices reenroll panel-e1" in details
    assert _uses_left(address) == {token[4:12]: 1}

    _enroll(address, token, "panel-e2", _csr())
    code, details = _refused(address, token, "panel-e3", _csr())
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "used up, expired or revoked" in details


def test_bad_requests_are_refused_and_use_up_nothing(ca_controller: Controller) -> None:
    address = ca_controller.address
    token = _token(address, "--school", "77")
    cases = [
        ("panel-x", b"-----BEGIN CERTIFICATE REQUEST-----\ngarbage\n", "not a readable PEM CSR"),
        ("no good id", _csr(), "is not a valid id"),
    ]
    for device_id, csr, message in cases:
        code, details = _refused(address, token, device_id, csr)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert message in details
    assert _uses_left(address) == {token[4:12]: 1}
    code, _ = _refused(address, "sfe_forged", "panel-x", _csr())
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert schoolctl(address, "enroll", "token", "revoke", token[4:12]).code == 0
    code, _ = _refused(address, token, "panel-x", _csr())
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "Traceback" not in ca_controller.log_text()
    assert "enrollment refused" in ca_controller.log_text()


def test_a_controller_without_a_ca_says_how_to_make_one(tmp_path: Path) -> None:
    controller = Controller(
        tmp_path, env={"SCHOOLFLEET_CONTROLLER_DATA_DIR": str(tmp_path / "empty")}
    ).start()
    try:
        token = _token(controller.address, "--school", "1")
        code, details = _refused(controller.address, token, "panel-n", _csr())
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert "schoolfleet-controller init" in details
        assert _uses_left(controller.address) == {token[4:12]: 1}
    finally:
        controller.stop()


def test_decommission_cuts_a_device_off_until_it_enrolls_again(
    ca_controller: Controller, agents: list[Agent]
) -> None:
    address = ca_controller.address
    agent = Agent(ca_controller.workdir, "panel-d", "panel", "s1", "r1", address).start()
    agents.append(agent)

    def status() -> str | None:
        shown = schoolctl(address, "devices", "show", "panel-d", "--json")
        return shown.json()["status"] if shown.code == 0 else None

    wait_until(lambda: status() == "online", 20, "panel-d online")
    done = schoolctl(address, "devices", "decommission", "panel-d", "--yes")
    assert done.code == 0 and "decommissioned" in done.out
    wait_until(lambda: status() == "offline", 10, "panel-d cut off")
    wait_until(
        lambda: agent.log.read_text().count("PERMISSION_DENIED") >= 2,
        20,
        "the agent refused again on reconnecting",
    )
    assert "is decommissioned" in agent.log.read_text()
    assert "stream refused device=panel-d" in ca_controller.log_text()
    shown = schoolctl(address, "devices", "show", "panel-d", "--json").json()
    assert shown["enrollment"]["decommissioned_at"] is not None
    assert shown["enrollment"]["serial"] is None  # it never enrolled before
    assert "decommissioned" in schoolctl(address, "devices", "show", "panel-d").out

    # Allowed to re-enroll, it enrolls with a token and may connect again.
    assert schoolctl(address, "devices", "reenroll", "panel-d").code == 0
    token = _token(address, "--school", "s1")
    _enroll(address, token, "panel-d", _csr())
    wait_until(lambda: status() == "online", 20, "panel-d back online")
    enrollment = schoolctl(address, "devices", "show", "panel-d", "--json").json()["enrollment"]
    assert enrollment["decommissioned_at"] is None and enrollment["serial"]
    assert enrollment["reenroll_allowed"] is False

    unknown = schoolctl(address, "devices", "decommission", "panel-none", "--yes")
    assert unknown.code == 4 and "no device 'panel-none'" in unknown.err
    never = schoolctl(address, "devices", "reenroll", "panel-none")
    assert never.code == 4 and "no device 'panel-none'" in never.err


def test_an_agent_enrolls_itself_on_its_first_start(
    ca_controller: Controller, agents: list[Agent]
) -> None:
    address = ca_controller.address
    token = _token(address, "--school", "1234")
    agent = Agent(
        ca_controller.workdir,
        "panel-a",
        "panel",
        "1234",
        "r1",
        address,
        extra={"enroll_token": token},
    ).start()
    agents.append(agent)
    tls = ca_controller.workdir / "tls-panel-a"
    wait_until((tls / "device.crt").exists, 20, "the agent's certificate")
    assert oct((tls / "device.key").stat().st_mode & 0o777) == "0o600"
    cert = x509.load_pem_x509_certificate((tls / "device.crt").read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate((tls / "ca.crt").read_bytes()))
    assert device_identity(cert) == ("panel-a", "1234")
    # The key stayed on the device: the certificate is for the key it made.
    key = serialization.load_pem_private_key((tls / "device.key").read_bytes(), None)
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]
    assert _uses_left(address) == {token[4:12]: 0}

    # A restart keeps its certificate and asks for nothing.
    agent.stop()
    agent.start()
    wait_until(lambda: agent.log.read_text().count("agent started") == 2, 10, "restart")
    wait_until(lambda: "spool opened" in agent.log.read_text().split("agent started")[-1], 10, "up")
    assert agent.log.read_text().count("enrolled device=panel-a") == 1


def test_an_agent_with_a_bad_token_says_so_and_runs_on(
    ca_controller: Controller, agents: list[Agent]
) -> None:
    agent = Agent(
        ca_controller.workdir,
        "panel-b",
        "panel",
        "1234",
        "r1",
        ca_controller.address,
        extra={"enroll_token": "sfe_not-a-token"},
    ).start()
    agents.append(agent)
    wait_until(lambda: "enrollment refused" in agent.log.read_text(), 20, "the refusal in the log")
    line = next(x for x in agent.log.read_text().splitlines() if "enrollment refused" in x)
    assert "code=PERMISSION_DENIED" in line and "not valid" in line
    wait_until(
        lambda: schoolctl(ca_controller.address, "devices", "show", "panel-b").code == 0,
        20,
        "panel-b reporting all the same",
    )
    assert not (ca_controller.workdir / "tls-panel-b" / "device.key").exists()
