"""A device's enrollment decided in-process (controller/enroll/enrolling.py): a token's
use traded for a certificate of the token's school, recorded with it; every refusal
leaves nothing signed and nothing stored. Real SQLite and PostgreSQL, the project's
own CA."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from common.secret_hash import hash_secret
from controller.enroll import tokens
from controller.enroll.ca_keeper import CaKeeper
from controller.enroll.enrolling import Attempt, EnrollAsk, Enrollments, NoCa
from controller.enroll.pki import init_ca
from controller.errors import EnrollRefused, ProtocolError
from controller.stores import Stores
from tests.hostile_pki import csr_pem

T0 = 1_800_000_000.0


@pytest.fixture
def store(both_stores: Stores) -> Stores:
    return both_stores


def _token(store: Stores, school: str, uses: int = 1) -> str:
    token, secret = tokens.mint(school, uses, 3600, T0)
    store.enrollments.add_enroll_token(token, hash_secret(secret))
    return secret


def _enrollments(store: Stores, tmp_path: Path, *, ca: bool = True) -> Enrollments:
    if ca:
        init_ca(tmp_path / "pki", ["controller.test"], ["127.0.0.1"])
    return Enrollments(CaKeeper(tmp_path / "pki"), store.enrollments, store.devices.get_device)


def test_a_token_s_use_becomes_a_certificate_of_its_school(store: Stores, tmp_path: Path) -> None:
    secret = _token(store, "s7")
    attempt = Attempt()
    enrollments = _enrollments(store, tmp_path)
    issued = enrollments.enroll(EnrollAsk("panel-1", secret, csr_pem()), attempt, T0 + 1)
    cert = x509.load_pem_x509_certificate(issued.certificate_pem)
    assert f"{cert.serial_number:x}" == issued.serial
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [u.value for u in uris] == ["urn:schoolfleet:device:s7:panel-1"]
    assert attempt.school_id == "s7"
    enrolled = store.enrollments.get_enrollment("panel-1")
    assert enrolled is not None
    assert (enrolled.school_id, enrolled.serial, enrolled.enrolled_at) == (
        "s7",
        issued.serial,
        T0 + 1,
    )
    # The one use is taken: the same token again is refused.
    with pytest.raises(EnrollRefused):
        enrollments.enroll(EnrollAsk("panel-2", secret, csr_pem()), Attempt(), T0 + 2)
    assert store.enrollments.get_enrollment("panel-2") is None


def test_an_unknown_token_leaves_the_attempt_anonymous(store: Stores, tmp_path: Path) -> None:
    attempt = Attempt()
    with pytest.raises(EnrollRefused):
        _enrollments(store, tmp_path).enroll(
            EnrollAsk("panel-1", "not-a-token", csr_pem()), attempt, T0
        )
    assert (attempt.actor, attempt.school_id) == ("-", "")
    assert store.enrollments.get_enrollment("panel-1") is None


def test_a_hostile_device_id_is_refused_before_the_token_is_read(
    store: Stores, tmp_path: Path
) -> None:
    secret = _token(store, "s1")
    with pytest.raises(ProtocolError, match=r"^device id '\.\./\.\./etc/x' is not a valid id$"):
        _enrollments(store, tmp_path).enroll(
            EnrollAsk("../../etc/x", secret, csr_pem()), Attempt(), T0
        )
    assert [t.uses_left for t in store.enrollments.list_enroll_tokens("s1")] == [1]


def test_without_a_ca_nothing_is_signed_and_the_token_is_kept(
    store: Stores, tmp_path: Path
) -> None:
    secret = _token(store, "s1")
    with pytest.raises(NoCa, match=r"^the controller cannot sign certificates: "):
        _enrollments(store, tmp_path, ca=False).enroll(
            EnrollAsk("panel-1", secret, csr_pem()), Attempt(), T0
        )
    assert store.enrollments.get_enrollment("panel-1") is None
    assert [t.uses_left for t in store.enrollments.list_enroll_tokens("s1")] == [1]
