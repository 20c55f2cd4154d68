"""Forged TLS identities for hostile-input tests: keys, CSRs and client certificates.

Keys, certificate requests (good, tampered, of an unknown version) and client
certificates made by hand: signed by the real CA, by a look-alike of it or by
themselves, with any device URIs and any dates. Only the device certificates that
enrollment would hand out go through the controller's own code (``sign_device_csr``).
"""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from controller.enroll.device_certs import sign_device_csr
from controller.enroll.pki import CertificateAuthority


@dataclass(frozen=True)
class KeyCert:
    """A private key and its certificate, PEM: a client's TLS identity."""

    key: bytes
    cert: bytes


def new_key(curve: str = "P-256") -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1() if curve == "P-384" else ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def csr_pem(key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hostile")]))
        .sign(key or new_key(), hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def device_cert(ca: CertificateAuthority, device_id: str, school_id: str) -> KeyCert:
    """What enrollment gives a device: the CA's certificate for its own new key."""
    key = new_key()
    return KeyCert(key_pem(key), sign_device_csr(ca, csr_pem(key), device_id, school_id).pem)


def certificate(
    issuer_name: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    uris: list[str],
    *,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    client_auth: bool = True,
    key: ec.EllipticCurvePrivateKey | None = None,
    serial: int | None = None,
) -> KeyCert:
    """A client certificate made by hand: any issuer, any device URIs, any dates, any
    serial number."""
    key = key or new_key()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hostile")]))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(hours=1))
        .not_valid_after(not_after or now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if client_auth:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=False,
        )
    cert = builder.sign(issuer_key, hashes.SHA256())
    return KeyCert(key_pem(key), cert.public_bytes(serialization.Encoding.PEM))


def self_signed(uri: str) -> KeyCert:
    """A forgery: a certificate that names the device and vouches for itself."""
    key = new_key()
    return certificate(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hostile")]), key, [uri], key=key
    )


def tampered_csr() -> bytes:
    """A certificate request whose signature no longer matches what it says."""
    csr = x509.load_pem_x509_csr(csr_pem())
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)


def csr_of_version(version: int) -> bytes:
    """A certificate request whose version field says ``version`` (0 means v1, the only one)."""
    der = x509.load_pem_x509_csr(csr_pem()).public_bytes(serialization.Encoding.DER)
    # The first INTEGER 0 in the DER is CertificationRequestInfo's version.
    at = der.index(b"\x02\x01\x00")
    der = der[:at] + bytes([2, 1, version]) + der[at + 3 :]
    return b"".join(
        [
            b"-----BEGIN CERTIFICATE REQUEST-----\n",
            base64.encodebytes(der),
            b"-----END CERTIFICATE REQUEST-----\n",
        ]
    )


def look_alike_ca(ca: CertificateAuthority) -> tuple[x509.Name, ec.EllipticCurvePrivateKey]:
    """Another key under the real CA's exact name: what a forger would sign with."""
    return ca.certificate.subject, new_key()
