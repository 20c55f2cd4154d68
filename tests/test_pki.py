"""The controller's certificate authority: files, certificates and device identities."""

from __future__ import annotations

import datetime as dt
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controller.enroll.device_certs import device_identity, sign_device_csr
from controller.enroll.pki import (
    CaFiles,
    CertificateAuthority,
    fingerprint,
    init_ca,
    load_ca,
)
from controller.errors import PkiError

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
NAME = "controller.school.test"
ADDRESSES = ["198.18.0.1", "2001:db8::1"]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def make_csr(
    key: CertificateIssuerPrivateKeyTypes,
    cn: str = "other-device",
    ou: str = "other-school",
) -> bytes:
    """A request that asks for someone else's identity and a CA certificate."""
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
                    x509.NameAttribute(NameOID.COMMON_NAME, cn),
                ]
            )
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"urn:schoolfleet:device:{ou}:{cn}")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, algorithm)
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def device_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def files(tmp_path: Path) -> CaFiles:
    return init_ca(tmp_path / "pki", [NAME], ADDRESSES, now=NOW)


@pytest.fixture
def ca(files: CaFiles) -> CertificateAuthority:
    return load_ca(files.directory)


@pytest.fixture
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    value: int = request.param
    old = os.umask(value)
    try:
        yield value
    finally:
        os.umask(old)


# --- init_ca ---------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077], indirect=True)
def test_init_writes_four_files_with_their_modes_whatever_the_umask(
    tmp_path: Path, umask: int
) -> None:
    files = init_ca(tmp_path / "data" / "pki", [NAME], [], now=NOW)
    assert mode(files.directory) == 0o700
    assert sorted(p.name for p in files.directory.iterdir()) == [
        "ca.crt",
        "ca.key",
        "server.crt",
        "server.key",
    ]
    assert (mode(files.ca_key), mode(files.server_key)) == (0o600, 0o600)
    assert (mode(files.ca_cert), mode(files.server_cert)) == (0o644, 0o644)
    assert files.replaced is False


def test_keys_are_unencrypted_pkcs8_ec_p256(files: CaFiles) -> None:
    for path in (files.ca_key, files.server_key):
        pem = path.read_bytes()
        assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
        key = serialization.load_pem_private_key(pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert isinstance(key.curve, ec.SECP256R1)


def test_the_ca_certificate_is_a_ten_year_ca_for_issuing_only(files: CaFiles) -> None:
    ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    assert ca_cert.subject == ca_cert.issuer
    ca_cert.verify_directly_issued_by(ca_cert)
    constraints = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert (constraints.value.ca, constraints.value.path_length) == (True, 0)
    usage = ca_cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert ca_cert.not_valid_after_utc == NOW + dt.timedelta(days=3650)
    assert ca_cert.not_valid_before_utc <= NOW


def test_the_server_certificate_is_issued_by_the_ca_for_the_names_given(
    files: CaFiles,
) -> None:
    ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    server.verify_directly_issued_by(ca_cert)
    alt_names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert alt_names.get_values_for_type(x509.DNSName) == [NAME]
    assert [str(ip) for ip in alt_names.get_values_for_type(x509.IPAddress)] == ADDRESSES
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    usage = server.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    aki = server.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert server.not_valid_after_utc == NOW + dt.timedelta(days=730)
    server_key = serialization.load_pem_private_key(files.server_key.read_bytes(), None)
    assert server.public_key() == server_key.public_key()


def test_an_existing_ca_is_not_replaced_without_force(files: CaFiles) -> None:
    before = {p.name: p.read_bytes() for p in files.directory.iterdir()}
    with pytest.raises(PkiError) as raised:
        init_ca(files.directory, ["other.test"], [])
    assert str(raised.value) == (
        f"{files.ca_key} already exists: a new CA means every device would have to "
        "re-enroll (use --force to replace it)"
    )
    assert {p.name: p.read_bytes() for p in files.directory.iterdir()} == before


def test_force_replaces_the_ca(files: CaFiles) -> None:
    again = init_ca(files.directory, ["other.test"], [], force=True, now=NOW)
    assert again.replaced is True
    assert fingerprint(again.ca) != fingerprint(files.ca)
    assert again.ca.subject != files.ca.subject  # a new name as well as a new key
    loaded = load_ca(files.directory)
    assert loaded.certificate == again.ca
    assert sorted(p.name for p in files.directory.iterdir()) == [
        "ca.crt",
        "ca.key",
        "server.crt",
        "server.key",
    ]
    assert mode(again.ca_key) == 0o600


@pytest.mark.parametrize(
    ("names", "addresses", "message"),
    [
        (["bad_name.test"], [], "'bad_name.test' is not a valid DNS name"),
        (["-leading.test"], [], "'-leading.test' is not a valid DNS name"),
        (["*.school.test"], [], "'*.school.test' is not a valid DNS name"),
        (["trailing.dot."], [], "'trailing.dot.' is not a valid DNS name"),
        (["a" * 64 + ".test"], [], "is not a valid DNS name"),
        (["198.18.0.1"], [], "'198.18.0.1' is an IP address, not a DNS name"),
        ([NAME], ["not-an-ip"], "'not-an-ip' is not an IP address"),
        ([], ["198.18.0.256"], "'198.18.0.256' is not an IP address"),
        ([], ["fe80::1%eth0"], "'fe80::1%eth0' has a zone"),
        ([], [], "at least one DNS name or IP address"),
    ],
)
def test_bad_names_and_addresses_are_refused_before_anything_is_written(
    tmp_path: Path, names: list[str], addresses: list[str], message: str
) -> None:
    with pytest.raises(PkiError) as raised:
        init_ca(tmp_path / "pki", names, addresses)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "pki").exists()


def test_repeated_names_appear_once_and_in_lower_case(tmp_path: Path) -> None:
    files = init_ca(
        tmp_path / "pki", ["Controller.Test", "controller.test"], ["2001:db8::1", "2001:db8:0::1"]
    )
    alt_names = files.server.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert alt_names.value.get_values_for_type(x509.DNSName) == ["controller.test"]
    assert len(alt_names.value.get_values_for_type(x509.IPAddress)) == 1


# --- load_ca ---------------------------------------------------------------------------


def test_load_ca_reads_back_what_init_wrote(files: CaFiles, ca: CertificateAuthority) -> None:
    assert ca.certificate == files.ca
    assert ca.key.public_key() == files.ca.public_key()


def test_a_ca_key_open_to_the_group_is_refused(files: CaFiles) -> None:
    files.ca_key.chmod(0o640)
    with pytest.raises(PkiError) as raised:
        load_ca(files.directory)
    assert str(raised.value) == (
        f"{files.ca_key} is open to group or others (mode 0640): it must be 0600 "
        f"(chmod 600 {files.ca_key})"
    )


@pytest.mark.parametrize("missing", ["ca.key", "ca.crt"])
def test_a_missing_file_is_named(files: CaFiles, missing: str) -> None:
    (files.directory / missing).unlink()
    with pytest.raises(PkiError) as raised:
        load_ca(files.directory)
    assert str(raised.value) == (
        f"{files.directory / missing} does not exist: run 'schoolfleet-controller init' first"
    )


def test_a_key_that_does_not_match_the_certificate_is_refused(
    files: CaFiles, tmp_path: Path
) -> None:
    other = init_ca(tmp_path / "other", [NAME], [])
    files.ca_key.write_bytes(other.ca_key.read_bytes())
    with pytest.raises(PkiError) as raised:
        load_ca(files.directory)
    assert str(raised.value) == f"{files.ca_cert} does not match the key in {files.ca_key}"


def test_files_that_are_not_pem_are_named(files: CaFiles) -> None:
    files.ca_cert.write_text("not a certificate\n")
    with pytest.raises(PkiError, match=r"ca\.crt is not a PEM certificate$"):
        load_ca(files.directory)
    files.ca_key.write_text("not a key\n")
    with pytest.raises(PkiError, match=r"ca\.key is not an unencrypted PEM private key$"):
        load_ca(files.directory)


def test_the_server_certificate_is_not_accepted_as_a_ca(files: CaFiles) -> None:
    files.ca_key.write_bytes(files.server_key.read_bytes())
    files.ca_cert.write_bytes(files.server_cert.read_bytes())
    with pytest.raises(PkiError, match=r"ca\.crt is not a CA certificate$"):
        load_ca(files.directory)


# --- device certificates ---------------------------------------------------------------


def test_a_device_certificate_names_the_device_the_controller_chose(
    ca: CertificateAuthority,
) -> None:
    key = device_key()
    issued = sign_device_csr(ca, make_csr(key), "panel-1234-101", "1234", now=NOW)
    cert = x509.load_pem_x509_certificate(issued.pem)
    cert.verify_directly_issued_by(ca.certificate)
    assert device_identity(cert) == ("panel-1234-101", "1234")
    assert cert.subject.rfc4514_string() == "CN=panel-1234-101,OU=1234"
    assert cert.public_key() == key.public_key()
    alt_names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(alt_names) == [
        x509.UniformResourceIdentifier("urn:schoolfleet:device:1234:panel-1234-101")
    ]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    assert issued.serial == cert.serial_number
    assert issued.not_after == cert.not_valid_after_utc == NOW + dt.timedelta(days=825)


def test_ids_with_colons_round_trip(ca: CertificateAuthority) -> None:
    issued = sign_device_csr(ca, make_csr(device_key()), "panel:7", "school:12", now=NOW)
    cert = x509.load_pem_x509_certificate(issued.pem)
    assert device_identity(cert) == ("panel:7", "school:12")


def test_an_rsa_2048_request_is_accepted(ca: CertificateAuthority) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    issued = sign_device_csr(ca, make_csr(key), "laptop-1", "1234", now=NOW)
    cert = x509.load_pem_x509_certificate(issued.pem)
    assert device_identity(cert) == ("laptop-1", "1234")


@pytest.mark.parametrize(
    "key",
    [
        # A weak key on purpose: the CA must refuse it.
        pytest.param(lambda: rsa.generate_private_key(65537, 1024), id="rsa-1024"),  # noqa: S505
        pytest.param(lambda: ec.generate_private_key(ec.SECP384R1()), id="p-384"),
        pytest.param(ed25519.Ed25519PrivateKey.generate, id="ed25519"),
    ],
)
def test_weak_or_other_keys_are_refused(
    ca: CertificateAuthority, key: Callable[[], CertificateIssuerPrivateKeyTypes]
) -> None:
    with pytest.raises(PkiError) as raised:
        sign_device_csr(ca, make_csr(key()), "panel-1", "1234", now=NOW)
    assert str(raised.value) == (
        "the certificate request's key must be EC P-256 or RSA of at least 2048 bits"
    )


def test_a_tampered_request_is_refused(ca: CertificateAuthority) -> None:
    pem = make_csr(device_key(), cn="panel-1")
    der = x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER)
    assert der.count(b"panel-1") == 2  # the CN and the requested URI
    tampered = x509.load_der_x509_csr(der.replace(b"panel-1", b"panel-2"))
    with pytest.raises(PkiError, match=r"^the certificate request's signature does not verify$"):
        sign_device_csr(
            ca, tampered.public_bytes(serialization.Encoding.PEM), "panel-1", "1234", now=NOW
        )


def test_a_request_that_is_not_pem_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(PkiError, match=r"^the certificate request is not a readable PEM CSR$"):
        sign_device_csr(ca, b"hello", "panel-1", "1234", now=NOW)


@pytest.mark.parametrize(
    ("device_id", "school_id", "message"),
    [
        ("panel 1", "1234", "device id 'panel 1' is not 1-64"),
        ("panel-1", "", "school id '' is not 1-64"),
        ("panel-1", "x" * 65, "school id 'xxx"),
    ],
)
def test_bad_ids_are_refused(
    ca: CertificateAuthority, device_id: str, school_id: str, message: str
) -> None:
    with pytest.raises(PkiError) as raised:
        sign_device_csr(ca, make_csr(device_key()), device_id, school_id, now=NOW)
    assert str(raised.value).startswith(message)


def test_a_device_certificate_ends_with_its_ca(ca: CertificateAuthority) -> None:
    ca_end = ca.certificate.not_valid_after_utc
    near_end = ca_end - dt.timedelta(days=10)
    issued = sign_device_csr(ca, make_csr(device_key()), "panel-1", "1234", now=near_end)
    assert issued.not_after == ca_end
    with pytest.raises(PkiError, match=r"^the CA expired on "):
        sign_device_csr(ca, make_csr(device_key()), "panel-1", "1234", now=ca_end)


def test_a_certificate_from_a_foreign_ca_does_not_verify_against_ours(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    foreign_files = init_ca(tmp_path / "foreign", [NAME], ADDRESSES, now=NOW)
    foreign = load_ca(foreign_files.directory)
    issued = sign_device_csr(foreign, make_csr(device_key()), "panel-1", "1234", now=NOW)
    cert = x509.load_pem_x509_certificate(issued.pem)
    cert.verify_directly_issued_by(foreign.certificate)
    with pytest.raises(ValueError, match="does not match"):
        cert.verify_directly_issued_by(ca.certificate)


def test_device_identity_needs_the_device_uri(files: CaFiles, ca: CertificateAuthority) -> None:
    with pytest.raises(PkiError, match=r"^the certificate has no subject alternative name$"):
        device_identity(files.ca)
    with pytest.raises(PkiError, match=r"^the certificate has 0 urn:schoolfleet:device URIs"):
        device_identity(files.server)


@pytest.mark.parametrize(
    "uri",
    [
        "urn:schoolfleet:device:1234:panel:1",
        "urn:schoolfleet:device:1234",
        "urn:schoolfleet:device:1234:pa%6Eel-1",
        "urn:schoolfleet:device:1234:panel 1",
        "urn:schoolfleet:device::panel-1",
    ],
)
def test_a_malformed_device_uri_is_refused(ca: CertificateAuthority, uri: str) -> None:
    key = device_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "panel-1")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    with pytest.raises(PkiError) as raised:
        device_identity(cert)
    assert str(raised.value) == f"malformed device URI {uri!r}"
