"""Renewing a device's certificate: what a renewal request must be, and when it is due.

A device renews over its own mutual-TLS stream, so who it is comes from the stream's
certificate; the request only brings a new key. It may still say who it is for, and
then it must say this device and school: a request naming another one is refused,
as is a weak key, the key the device has now, or any extension but the device's own
URI. Plain logic of values; controller/api/renewal.py does the I/O.
"""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtensionOID, NameOID

from controller.enroll.device_certs import MIN_RSA_BITS, device_urn
from controller.errors import PkiError

# A device asks for a new certificate this far into its certificate's lifetime.
RENEW_AT = 2 / 3
# The request's size at most (a P-256 CSR is ~400 bytes).
CSR_MAX_BYTES = 8192
# Attribute of a CSR that carries its extensions (PKCS #9 extensionRequest).
_EXTENSION_REQUEST = x509.ObjectIdentifier("1.2.840.113549.1.9.14")

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


def renewal_key(csr_pem: bytes, device_id: str, school_id: str, current_key: bytes) -> PublicKey:
    """The new key in ``csr_pem``, a request from ``device_id`` of ``school_id`` whose
    certificate now holds ``current_key`` (DER SubjectPublicKeyInfo).

    PkiError, one line, when the request is not one this device may make.
    """
    if len(csr_pem) > CSR_MAX_BYTES:
        raise PkiError(f"the certificate request is over {CSR_MAX_BYTES} bytes")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
        signed = csr.is_signature_valid
        public = csr.public_key()
        extensions = list(csr.extensions)
        attributes = [attribute.oid for attribute in csr.attributes]
    except (ValueError, UnsupportedAlgorithm, x509.InvalidVersion, x509.DuplicateExtension):
        raise PkiError("the certificate request is not a readable PEM CSR") from None
    if not signed:
        raise PkiError("the certificate request's signature does not verify")
    _check_key(public)
    if spki(public) == current_key:
        raise PkiError("the certificate request has the device's current key: make a new one")
    _check_subject(csr.subject, device_id, school_id)
    odd = [oid.dotted_string for oid in attributes if oid != _EXTENSION_REQUEST]
    if odd:
        raise PkiError(f"the certificate request has attributes it may not have: {odd[0]}")
    for extension in extensions:
        if extension.oid != ExtensionOID.SUBJECT_ALTERNATIVE_NAME:
            name = getattr(extension.oid, "_name", None) or extension.oid.dotted_string
            raise PkiError(f"the certificate request asks for extension {name}, which it may not")
        _check_alt_names(extension.value, device_id, school_id)
    assert isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    return public


def _check_key(public: object) -> None:
    if isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, ec.SECP256R1):
        return
    if isinstance(public, rsa.RSAPublicKey) and public.key_size >= MIN_RSA_BITS:
        return
    raise PkiError(
        f"the certificate request's key must be EC P-256 or RSA of at least {MIN_RSA_BITS} bits"
    )


def _check_subject(subject: x509.Name, device_id: str, school_id: str) -> None:
    for attribute in subject:
        value = attribute.value if isinstance(attribute.value, str) else repr(attribute.value)
        if attribute.oid == NameOID.COMMON_NAME:
            if value != device_id:
                raise PkiError(
                    f"the certificate request names device {value[:80]!r}; a device may "
                    "renew only its own certificate"
                )
        elif attribute.oid == NameOID.ORGANIZATIONAL_UNIT_NAME:
            if value != school_id:
                raise PkiError(
                    f"the certificate request names school {value[:80]!r}, not this device's school"
                )
        else:
            raise PkiError(
                f"the certificate request's subject has {attribute.oid.dotted_string}: "
                "only CN (the device) and OU (its school) may be given"
            )


def _check_alt_names(value: x509.ExtensionType, device_id: str, school_id: str) -> None:
    own = device_urn(school_id, device_id)
    names = list(value) if isinstance(value, x509.SubjectAlternativeName) else []
    if not (
        len(names) == 1
        and isinstance(names[0], x509.UniformResourceIdentifier)
        and names[0].value == own
    ):
        shown = ", ".join(str(getattr(n, "value", n))[:80] for n in names[:3])
        raise PkiError(
            f"the certificate request names {shown or 'nothing'}; its only alternative "
            f"name may be this device's own, {own}"
        )


def spki(public: object) -> bytes:
    """A public key as DER SubjectPublicKeyInfo, to compare keys."""
    assert isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def renew_in(
    now: float,
    issued_at: float,
    not_after: float,
    *,
    device_id: str,
    rotation_started: float | None,
    spread: float,
) -> float:
    """Seconds until the device should renew: two thirds into its certificate's
    lifetime, or, while the fleet moves to a new CA that did not sign it, at the
    device's own moment in the ``spread`` seconds after the rotation began (stable
    per device, so a repeated status does not move it)."""
    due = issued_at + (not_after - issued_at) * RENEW_AT
    if rotation_started is not None:
        due = min(due, rotation_started + spread * _share(device_id))
    return max(0.0, due - now)


def _share(device_id: str) -> float:
    """A number in [0, 1) that is the same for a device every time."""
    digest = hashlib.sha256(device_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
