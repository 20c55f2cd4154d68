"""The controller's CAs over the years: a next CA beside the current one, then the switch.

Files in the pki directory (controller/enroll/pki.py makes the first four):

- ``ca.key``, ``ca.crt``: the current CA. It signs the controller's server certificate.
- ``server.key``, ``server.crt``: the controller's TLS certificate.
- ``ca-next.key``, ``ca-next.crt``: a CA being introduced (``ca add-next``). While it
  exists both CAs are trusted, and it signs every new device certificate (enrollments
  and renewals), so the fleet moves onto it as devices renew.
- ``ca-bundle.crt``: every trusted CA, what agents get over their streams and what
  schoolctl users should trust before the old CA is retired.
- ``retired/``: certificates of retired CAs, for the record; their keys are deleted.

``retire_old`` makes the next CA the current one and signs a new server certificate
with it, for the names the old one had. Every step writes with pki.write_all
(temporary files, then renames), and a half-done retirement (ca.crt already the
next CA's) reads as finished.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from controller.enroll.pki import (
    CA_CERT,
    CA_KEY,
    CERT_MODE,
    DIR_MODE,
    KEY_MODE,
    SERVER_CERT,
    SERVER_KEY,
    CertificateAuthority,
    IpAddress,
    ca_certificate,
    cert_pem,
    check_names,
    key_pem,
    load_ca,
    load_ca_pair,
    load_cert,
    os_problem,
    server_certificate,
    utc,
    write_all,
)
from controller.errors import PkiError

NEXT_KEY = "ca-next.key"
NEXT_CERT = "ca-next.crt"
BUNDLE = "ca-bundle.crt"
RETIRED = "retired"


def ca_id(cert: x509.Certificate) -> str:
    """A CA's id in the store: the SHA-256 of its certificate, lower-case hex."""
    return cert.fingerprint(hashes.SHA256()).hex()


@dataclass(frozen=True, slots=True)
class CaSet:
    """The CAs the controller trusts: the current one and, during a rotation, the next."""

    current: CertificateAuthority
    next: CertificateAuthority | None = None

    @property
    def issuing(self) -> CertificateAuthority:
        """The CA that signs device certificates now: the next one once there is one."""
        return self.next or self.current

    @property
    def issuing_id(self) -> str:
        return ca_id(self.issuing.certificate)

    @property
    def trusted(self) -> list[x509.Certificate]:
        return [ca.certificate for ca in (self.current, self.next) if ca is not None]

    def trusted_ids(self) -> set[str]:
        return {ca_id(cert) for cert in self.trusted}

    def bundle_pem(self) -> bytes:
        """Every trusted CA's certificate, PEM, the current one first."""
        return b"".join(cert_pem(cert) for cert in self.trusted)


def load_ca_set(pki_dir: Path) -> CaSet:
    """The current CA and the next one, if ``ca add-next`` made one."""
    current = load_ca(pki_dir)
    if not os.path.lexists(pki_dir / NEXT_CERT):
        return CaSet(current)
    upcoming = load_ca_pair(pki_dir / NEXT_KEY, pki_dir / NEXT_CERT)
    if ca_id(upcoming.certificate) == ca_id(current.certificate):
        # A retirement stopped after its renames: it is done.
        return CaSet(current)
    return CaSet(current, upcoming)


def add_next(pki_dir: Path, now: dt.datetime | None = None) -> CaSet:
    """Makes a new CA beside the current one; refuses while a next CA exists."""
    cas = load_ca_set(pki_dir)
    if cas.next is not None:
        raise PkiError(
            f"a next CA exists already ({pki_dir / NEXT_CERT}): retire the old one first "
            "('schoolfleet-controller ca retire-old')"
        )
    when = utc(now)
    key = ec.generate_private_key(ec.SECP256R1())
    upcoming = CertificateAuthority(key, ca_certificate(key, when))
    cas = CaSet(cas.current, upcoming)
    _write(
        pki_dir,
        {
            NEXT_KEY: (key_pem(key), KEY_MODE),
            NEXT_CERT: (cert_pem(upcoming.certificate), CERT_MODE),
            BUNDLE: (cas.bundle_pem(), CERT_MODE),
        },
    )
    return cas


def server_names(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    """The DNS names and IP addresses a server certificate is for."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, x509.DuplicateExtension, ValueError):
        return [], []
    addresses = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return list(san.get_values_for_type(x509.DNSName)), addresses


def load_server_cert(pki_dir: Path) -> x509.Certificate:
    return load_cert(pki_dir / SERVER_CERT)


def reissue_server_cert(
    pki_dir: Path,
    names: list[str],
    addresses: list[str],
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """A new key and server certificate for ``names`` and ``addresses``, signed by the
    current CA (the one every agent trusts); empty lists keep the present names."""
    current = load_ca(pki_dir)
    if not names and not addresses:
        names, addresses = server_names(load_server_cert(pki_dir))
    dns_names, ips = check_names(names, addresses)
    key, cert = _server_pair(current, dns_names, ips, utc(now))
    _write(
        pki_dir, {SERVER_KEY: (key_pem(key), KEY_MODE), SERVER_CERT: (cert_pem(cert), CERT_MODE)}
    )
    return cert


def renew_server_cert_if_due(
    pki_dir: Path, now: dt.datetime | None = None
) -> x509.Certificate | None:
    """Signs a new server certificate for the same names once the present one is two
    thirds through its lifetime (the controller does it by itself, like its devices);
    None while it is not due."""
    cert = load_server_cert(pki_dir)
    when = utc(now)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if when < start + (end - start) * 2 / 3:
        return None
    return reissue_server_cert(pki_dir, [], [], when)


@dataclass(frozen=True, slots=True)
class Retirement:
    """What ``retire_old`` did: the CA retired, the one now current, the new server cert."""

    retired: x509.Certificate
    current: x509.Certificate
    server: x509.Certificate
    kept_as: Path


def retire_old(pki_dir: Path, now: dt.datetime | None = None) -> Retirement:
    """Makes the next CA the current one, with a server certificate it signed for the
    same names; the old CA's certificate goes to ``retired/`` and its key is deleted."""
    cas = load_ca_set(pki_dir)
    if cas.next is None:
        raise PkiError(
            "there is no next CA to move to: add one first ('schoolfleet-controller ca add-next')"
        )
    when = utc(now)
    names, addresses = server_names(load_server_cert(pki_dir))
    dns_names, ips = check_names(names, addresses)
    key, server = _server_pair(cas.next, dns_names, ips, when)
    old = cas.current.certificate
    kept_as = pki_dir / RETIRED / f"ca-{when:%Y%m%d}-{ca_id(old)[:16]}.crt"
    try:
        (pki_dir / RETIRED).mkdir(mode=DIR_MODE, exist_ok=True)
        owner = _owner(pki_dir)
        if owner is not None:
            os.chown(pki_dir / RETIRED, *owner)
    except OSError as exc:
        raise PkiError(os_problem("cannot write", exc, pki_dir / RETIRED)) from None
    _write(kept_as.parent, {kept_as.name: (cert_pem(old), CERT_MODE)})
    _write(
        pki_dir,
        {
            CA_KEY: (key_pem(cas.next.key), KEY_MODE),
            CA_CERT: (cert_pem(cas.next.certificate), CERT_MODE),
            SERVER_KEY: (key_pem(key), KEY_MODE),
            SERVER_CERT: (cert_pem(server), CERT_MODE),
            BUNDLE: (cert_pem(cas.next.certificate), CERT_MODE),
        },
    )
    try:
        for name in (NEXT_KEY, NEXT_CERT):
            (pki_dir / name).unlink(missing_ok=True)
    except OSError as exc:
        raise PkiError(os_problem("cannot remove", exc, pki_dir / NEXT_KEY)) from None
    return Retirement(old, cas.next.certificate, server, kept_as)


def _server_pair(
    ca: CertificateAuthority, dns_names: list[str], ips: list[IpAddress], now: dt.datetime
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    return key, server_certificate(ca, key.public_key(), dns_names, ips, now)


def _write(directory: Path, files: dict[str, tuple[bytes, int]]) -> None:
    try:
        write_all(directory, files, _owner(directory))
    except OSError as exc:
        raise PkiError(os_problem("cannot write", exc, directory)) from None


def _owner(directory: Path) -> tuple[int, int] | None:
    """The folder's owner, for files root writes there: the controller runs as its own
    user (deploy/systemd), and a key root kept to itself would be unreadable to it."""
    if os.geteuid() != 0:
        return None
    st = os.stat(directory)
    return None if st.st_uid == 0 else (st.st_uid, st.st_gid)
