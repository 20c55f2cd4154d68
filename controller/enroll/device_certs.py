"""Device certificates: a device's request signed by the controller's CA, and back.

``sign_device_csr`` turns a device's certificate request into a client certificate;
``device_identity`` reads who a certificate says the device is. A device's identity
is the URI SAN ``urn:schoolfleet:device:<school_id>:<device_id>`` that only this CA
writes: the request's own subject and extensions are never copied.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from urllib.parse import quote, unquote

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controller.enroll.pki import CertificateAuthority, cert_pem, issue, utc
from controller.errors import PkiError
from inventory.model import valid_id

DEVICE_DAYS = 825
DEVICE_URN = "urn:schoolfleet:device"
MIN_RSA_BITS = 2048
# Short lifetimes are for tests; a device renews two thirds of the way in.
MIN_LIFETIME = dt.timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class IssuedCert:
    """A device certificate signed by the CA."""

    pem: bytes
    serial: int
    not_after: dt.datetime


def sign_device_csr(
    ca: CertificateAuthority,
    csr_pem: bytes,
    device_id: str,
    school_id: str,
    *,
    days: int = DEVICE_DAYS,
    now: dt.datetime | None = None,
    lifetime: dt.timedelta | None = None,
) -> IssuedCert:
    """A client certificate for ``device_id`` in ``school_id``, for the key in ``csr_pem``,
    valid ``lifetime`` (default ``days``).

    Only the request's key is used: its subject and extensions are ignored.
    """
    for what, value in (("device id", device_id), ("school id", school_id)):
        if not valid_id(value):
            raise PkiError(f"{what} {value!r} is not 1-64 of letters, digits and ._:-")
    if lifetime is None:
        if days < 1:
            raise PkiError(f"a device certificate must be valid for at least 1 day, not {days}")
        lifetime = dt.timedelta(days=days)
    if lifetime < MIN_LIFETIME:
        raise PkiError(f"a device certificate must be valid for at least {MIN_LIFETIME}")
    return sign_device_key(ca, _csr_public_key(csr_pem), device_id, school_id, lifetime, now)


def sign_device_key(
    ca: CertificateAuthority,
    public: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    device_id: str,
    school_id: str,
    lifetime: dt.timedelta,
    now: dt.datetime | None = None,
) -> IssuedCert:
    """A client certificate for a key already checked (sign_device_csr, renewal_key)."""
    when = utc(now)
    ca_expires = ca.certificate.not_valid_after_utc
    if when >= ca_expires:
        raise PkiError(f"the CA expired on {ca_expires:%Y-%m-%d}: re-initialise it")
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, school_id),
            x509.NameAttribute(NameOID.COMMON_NAME, device_id),
        ]
    )
    cert = issue(
        ca,
        subject,
        public,
        when,
        # A certificate that outlives its CA could never be verified anyway.
        min(when + lifetime, ca_expires),
        [
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(device_urn(school_id, device_id))]
            ),
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
        ],
    )
    return IssuedCert(cert_pem(cert), cert.serial_number, cert.not_valid_after_utc)


def device_urn(school_id: str, device_id: str) -> str:
    """The URI SAN naming a device; ``:`` inside an id is written ``%3A``."""
    return f"{DEVICE_URN}:{quote(school_id, safe='')}:{quote(device_id, safe='')}"


def device_identity(cert: x509.Certificate) -> tuple[str, str]:
    """``(device_id, school_id)`` from the certificate's device URI (never from its CN)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise PkiError("the certificate has no subject alternative name") from None
    except (x509.DuplicateExtension, ValueError):
        raise PkiError("the certificate's extensions cannot be read") from None
    return identity_from_uris(san.get_values_for_type(x509.UniformResourceIdentifier))


def identity_from_uris(uris: list[str]) -> tuple[str, str]:
    """``(device_id, school_id)`` from a certificate's URI names (a TLS peer's, say)."""
    urns = [uri for uri in uris if uri.startswith(f"{DEVICE_URN}:")]
    if len(urns) != 1:
        raise PkiError(f"the certificate has {len(urns)} {DEVICE_URN} URIs, not one")
    parts = urns[0].removeprefix(f"{DEVICE_URN}:").split(":")
    if len(parts) == 2:
        school_id, device_id = (unquote(part) for part in parts)
        # Only the exact form this CA writes is accepted: one spelling per device.
        if (
            valid_id(school_id)
            and valid_id(device_id)
            and device_urn(school_id, device_id) == urns[0]
        ):
            return device_id, school_id
    raise PkiError(f"malformed device URI {urns[0][:120]!r}")


def _csr_public_key(csr_pem: bytes) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
        signed = csr.is_signature_valid
        public = csr.public_key()
    # InvalidVersion (a CSR whose version is not v1) is no ValueError.
    except (ValueError, UnsupportedAlgorithm, x509.InvalidVersion):
        raise PkiError("the certificate request is not a readable PEM CSR") from None
    if not signed:
        raise PkiError("the certificate request's signature does not verify")
    if isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, ec.SECP256R1):
        return public
    if isinstance(public, rsa.RSAPublicKey) and public.key_size >= MIN_RSA_BITS:
        return public
    raise PkiError(
        f"the certificate request's key must be EC P-256 or RSA of at least {MIN_RSA_BITS} bits"
    )
