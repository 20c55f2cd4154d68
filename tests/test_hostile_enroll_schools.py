"""Enrollment and streams across schools: a device belongs to one school at a time.

A token of one school cannot enroll (take over) a device of another, even while that
device is open for re-enrollment; only central ops move a device between schools,
after which it enrolls with a token of its new school. A certificate from the
controller's own CA opens a stream only for an enrolled device, in the school of its
enrollment, with its current serial number: no "ghost" device appears. Every
enrollment, granted or refused, is in the audit log.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from cryptography import x509

from controller.enroll.device_certs import device_urn
from controller.enroll.pki import CertificateAuthority, load_ca
from protos.schoolfleet.v1 import agent_pb2
from tests.hostile_fleet import device_row, enroll_as, enrolled, serialized, token_uses
from tests.hostile_pki import KeyCert, certificate, csr_pem, device_cert
from tests.hostile_wire import DENIED, ENROLL, stream, tls_channel, unary
from tests.procs import Controller, Result, init_controller_ca, schoolctl, tls_env
from tests.raw_stream import hello

pytestmark = pytest.mark.e2e

SCHOOL_A, SCHOOL_B = "1001", "2002"
TAKEN = grpc.StatusCode.ALREADY_EXISTS


class Lab:
    """A mutual-TLS controller, its CA, and channels to its two ports."""

    def __init__(self, controller: Controller) -> None:
        self.c = controller
        self.pki = controller.workdir / "data/pki"
        self.ca: CertificateAuthority = load_ca(self.pki)
        self.ca_pem = (self.pki / "ca.crt").read_bytes()
        self.enroll = tls_channel(controller.enroll_port, self.ca_pem)
        self.it_a = controller.create_user("it-a", "school-it", SCHOOL_A).token

    def ctl(self, *args: str, token: str | None = None) -> Result:
        return schoolctl(
            f"127.0.0.1:{self.c.enroll_port}",
            "--ca-cert",
            str(self.pki / "ca.crt"),
            *args,
            token=token,
        )

    def token(self, school: str, uses: int = 1) -> str:
        created = self.ctl("enroll", "token", "create", "--school", school, "--uses", str(uses))
        assert created.code == 0, created.err
        return created.out.strip()

    def try_enroll(self, secret: str, device_id: str) -> tuple[grpc.StatusCode, str]:
        request = agent_pb2.EnrollRequest(token=secret, device_id=device_id, csr_pem=csr_pem())
        code, details, _ = unary(self.enroll, ENROLL, request.SerializeToString())
        return code, details

    def connect(self, client: KeyCert, device_id: str) -> tuple[grpc.StatusCode, str]:
        """Opens a stream as ``device_id`` (its Hello names school 9999, which never
        counts) and closes it: OK when the controller took it."""
        with tls_channel(self.c.grpc_port, self.ca_pem, client) as channel:
            return stream(channel, serialized(hello(device_id, "9999")))

    def devices(self) -> dict[str, str]:
        """Every device ``schoolctl devices list`` shows central ops, with its school."""
        listed = self.ctl("devices", "list", "--json")
        assert listed.code == 0, listed.err
        return {d["device_id"]: d["school_id"] for d in listed.json()}

    def audit(self, action: str, target: str) -> list[dict[str, Any]]:
        shown = self.ctl("audit", "--action", action, "--target", target, "--json")
        assert shown.code == 0, shown.err
        entries: list[dict[str, Any]] = shown.json()
        return entries


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("enroll-schools")
    data = tmp / "data"
    init_controller_ca(data)
    controller = Controller(tmp, env=tls_env(data))
    try:
        controller.start()
        lab = Lab(controller)
        yield lab
        lab.enroll.close()
        log = controller.log_text()
        assert "Traceback" not in log, log[-3000:]
    finally:
        controller.stop()


def _taken_answer(device_id: str) -> str:
    """What Enroll answers for any device id a token may not have, whatever the reason."""
    return (
        f"device {device_id!r} cannot enroll with this token: it is enrolled already, "
        f"or in another school. Its school's IT can let it enroll again "
        f"('schoolctl devices reenroll {device_id}'); central ops move a device between "
        "schools ('schoolctl devices move')"
    )


def _serial(client: KeyCert) -> str:
    return f"{x509.load_pem_x509_certificate(client.cert).serial_number:x}"


# --- a token enrolls only devices of its own school ----------------------------------------


def test_a_token_of_another_school_cannot_take_a_device_open_for_re_enrollment(
    lab: Lab,
) -> None:
    first = enroll_as(lab.enroll, lab.token(SCHOOL_A), "panel-t1")
    assert lab.connect(first, "panel-t1") == (grpc.StatusCode.OK, "")
    # Its school's IT lets it enroll again (a disk swap, say).
    assert lab.ctl("devices", "reenroll", "panel-t1", token=lab.it_a).code == 0

    foreign = lab.token(SCHOOL_B, uses=3)
    refused = lab.try_enroll(foreign, "panel-t1")
    # The same answer as for a device of the token's own school that is not open: the
    # holder of a token learns nothing of where the id is or whether it is open.
    enroll_as(lab.enroll, foreign, "panel-b1")
    assert refused == (TAKEN, _taken_answer("panel-t1"))
    assert lab.try_enroll(foreign, "panel-b1") == (TAKEN, _taken_answer("panel-b1"))
    # Nothing moved, and the refusals took no use of the token.
    assert token_uses(lab.c.database, foreign) == (1, 2)
    assert lab.devices()["panel-t1"] == SCHOOL_A
    assert lab.ctl("devices", "show", "panel-t1", token=lab.it_a).code == 0
    assert lab.connect(first, "panel-t1") == (grpc.StatusCode.OK, "")
    # Its own school's token still does what reenroll allowed.
    again = enroll_as(lab.enroll, lab.token(SCHOOL_A), "panel-t1")
    assert lab.connect(again, "panel-t1") == (grpc.StatusCode.OK, "")

    entries = lab.audit("enroll", "panel-t1")
    assert [(e["outcome"], e["school_id"], e["actor"]) for e in entries] == [
        ("ok", SCHOOL_A, entries[0]["actor"]),
        ("denied", SCHOOL_B, foreign[4:12]),
        ("ok", SCHOOL_A, entries[2]["actor"]),
    ]
    assert entries[1]["message"] == _taken_answer("panel-t1")
    assert entries[1]["peer"].startswith("ipv4:127.0.0.1:")


def test_every_refused_enrollment_is_audited_without_its_secret(lab: Lab) -> None:
    secret = "sfe_" + "x" * 43
    assert lab.try_enroll(secret, "panel-nobody")[0] == DENIED
    assert lab.try_enroll(lab.token(SCHOOL_A), "not a valid id\n")[0] == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    (entry,) = lab.audit("enroll", "panel-nobody")
    assert (entry["actor"], entry["outcome"], entry["school_id"]) == ("-", "denied", "")
    assert "not valid" in entry["message"]
    bad = lab.ctl("audit", "--action", "enroll", "--outcome", "failed", "--json").json()
    # A client's bad id is kept quoted: its newline cannot start a line of its own.
    assert any(e["target"] == repr("not a valid id\n") for e in bad)
    assert "enrollment refused device='not a valid id\\n' " in lab.c.log_text()
    assert secret not in lab.c.log_text()
    assert secret not in json.dumps(lab.ctl("audit", "--json").json())


# --- moving a device is central ops' -------------------------------------------------------


def test_central_ops_move_a_device_and_it_enrolls_with_its_new_school(lab: Lab) -> None:
    old = enroll_as(lab.enroll, lab.token(SCHOOL_A), "panel-m1")
    assert lab.connect(old, "panel-m1") == (grpc.StatusCode.OK, "")

    # Not a school's IT, not even the device's own school's.
    denied = lab.ctl("devices", "move", "panel-m1", "--school", SCHOOL_B, "--yes", token=lab.it_a)
    assert denied.code == 6, denied.err
    assert "only central-ops may" in denied.err
    assert lab.devices()["panel-m1"] == SCHOOL_A

    moved = lab.ctl("devices", "move", "panel-m1", "--school", SCHOOL_B, "--yes")
    assert moved.code == 0, moved.err
    assert moved.out.strip() == (
        f"panel-m1 moved from school {SCHOOL_A} to {SCHOOL_B}: "
        f"it must enroll with a token of school {SCHOOL_B}"
    )
    assert lab.devices()["panel-m1"] == SCHOOL_B
    assert lab.ctl("devices", "show", "panel-m1", token=lab.it_a).code in (4, 6)
    # Its certificate names its old school: no longer a way in.
    assert lab.connect(old, "panel-m1") == (
        DENIED,
        f"the certificate names school {SCHOOL_A}, not device panel-m1's school; "
        "it must enroll with a token of its school",
    )
    # Its old school cannot take it back; its new school enrolls it.
    assert lab.try_enroll(lab.token(SCHOOL_A), "panel-m1") == (TAKEN, _taken_answer("panel-m1"))
    new = enroll_as(lab.enroll, lab.token(SCHOOL_B), "panel-m1")
    assert lab.connect(new, "panel-m1") == (grpc.StatusCode.OK, "")
    assert lab.devices()["panel-m1"] == SCHOOL_B

    (ok,) = lab.audit("devices.move", "panel-m1")
    # In the audit of the school that lost it; the message names both.
    assert (ok["outcome"], ok["actor"], ok["school_id"]) == ("ok", "ops", SCHOOL_A)
    assert ok["message"] == f"moved from school {SCHOOL_A} to {SCHOOL_B}"
    tried = lab.ctl("audit", "--action", "devices.move", "--actor", "it-a", "--json").json()
    assert [e["outcome"] for e in tried] == ["denied"]


def test_a_move_names_a_known_device_and_another_valid_school(lab: Lab) -> None:
    enroll_as(lab.enroll, lab.token(SCHOOL_A), "panel-m2")
    unknown = lab.ctl("devices", "move", "panel-none", "--school", SCHOOL_B, "--yes")
    assert unknown.code == 4 and "no device 'panel-none'" in unknown.err
    same = lab.ctl("devices", "move", "panel-m2", "--school", SCHOOL_A, "--yes")
    assert same.code == 2 and f"already in school {SCHOOL_A}" in same.err
    bad = lab.ctl("devices", "move", "panel-m2", "--school", "no school\n", "--yes")
    assert bad.code == 2 and "school id" in bad.err
    assert "Traceback" not in unknown.err + same.err + bad.err
    assert [e["outcome"] for e in lab.audit("devices.move", "panel-m2")] == ["failed", "failed"]


# --- which certificates open a stream ------------------------------------------------------


def test_a_certificate_for_a_device_never_enrolled_opens_no_stream(lab: Lab) -> None:
    ghost = device_cert(lab.ca, "panel-ghost", SCHOOL_A)
    assert lab.connect(ghost, "panel-ghost") == (
        DENIED,
        "device panel-ghost is not enrolled; it must enroll with a token of its school",
    )
    assert "panel-ghost" not in lab.devices()
    assert device_row(lab.c.database, "panel-ghost") is None
    assert enrolled(lab.c.database, ["panel-ghost"]) == set()
    assert "stream refused device=panel-ghost" in lab.c.log_text()
    assert "reason=not_enrolled" in lab.c.log_text()
    assert lab.c.metrics()['schoolfleet_streams_closed_total{reason="not_enrolled"}'] >= 1


def test_a_certificate_naming_another_school_opens_no_stream(lab: Lab) -> None:
    good = enroll_as(lab.enroll, lab.token(SCHOOL_A), "panel-s1")
    serial = int(_serial(good), 16)
    # The CA's own key, the device's current serial number, another school.
    other = certificate(
        lab.ca.certificate.subject,
        lab.ca.key,
        [device_urn(SCHOOL_B, "panel-s1")],
        serial=serial,
    )
    assert lab.connect(other, "panel-s1") == (
        DENIED,
        f"the certificate names school {SCHOOL_B}, not device panel-s1's school; "
        "it must enroll with a token of its school",
    )
    assert "panel-s1" not in lab.devices()
    assert device_row(lab.c.database, "panel-s1") is None
    assert "reason=wrong_school" in lab.c.log_text()
    assert lab.c.metrics()['schoolfleet_streams_closed_total{reason="wrong_school"}'] >= 1
    # The same school with a serial number that is not the current one.
    stale = device_cert(lab.ca, "panel-s1", SCHOOL_A)
    assert lab.connect(stale, "panel-s1")[0] == DENIED
    assert lab.connect(good, "panel-s1") == (grpc.StatusCode.OK, "")
    assert lab.devices()["panel-s1"] == SCHOOL_A
