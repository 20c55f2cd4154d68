"""The controller's own certificate authority.

``init_ca`` makes the CA and the controller's TLS server certificate; ``load_ca`` reads
the CA back; ``issue`` signs an end-entity certificate (controller/enroll/device_certs.py
uses it for devices).

Keys are EC P-256 and live in one directory (mode 0700): private keys 0600,
certificates 0644, every file replaced atomically. A device's identity is the URI SAN
``urn:schoolfleet:device:<school_id>:<device_id>`` that only this CA writes: the
request's own subject and extensions are never copied into a certificate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias, TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controller.errors import PkiError

CA_KEY = "ca.key"
CA_CERT = "ca.crt"
SERVER_KEY = "server.key"
SERVER_CERT = "server.crt"

CA_DAYS = 3650
SERVER_DAYS = 730
# Certificates start this far in the past, so a peer whose clock is a little behind
# does not see them as not yet valid.
BACKDATE = dt.timedelta(minutes=5)

KEY_MODE = 0o600
CERT_MODE = 0o644
DIR_MODE = 0o700

_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_DNS_MAX = 253
_T = TypeVar("_T")
IpAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """The CA's private key and its self-signed certificate."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate


@dataclass(frozen=True, slots=True)
class CaFiles:
    """What ``init_ca`` wrote, and the two certificates it made."""

    directory: Path
    ca_key: Path
    ca_cert: Path
    server_key: Path
    server_cert: Path
    ca: x509.Certificate
    server: x509.Certificate
    # True when an existing CA was replaced (force): its devices must re-enroll.
    replaced: bool


# --- creating the CA -------------------------------------------------------------------


def init_ca(
    pki_dir: Path,
    names: list[str],
    addresses: list[str],
    *,
    force: bool = False,
    now: dt.datetime | None = None,
) -> CaFiles:
    """Creates the CA and the controller's server certificate for ``names`` and ``addresses``.

    Refuses to replace an existing CA unless ``force``: every device enrolled with the
    old one would have to enroll again.
    """
    dns_names, ips = check_names(names, addresses)
    existing = [p for p in (pki_dir / CA_KEY, pki_dir / CA_CERT) if os.path.lexists(p)]
    if existing and not force:
        raise PkiError(
            f"{existing[0]} already exists: a new CA means every device would have to "
            "re-enroll (use --force to replace it)"
        )
    when = utc(now)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = CertificateAuthority(ca_key, ca_certificate(ca_key, when))
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = server_certificate(ca, server_key.public_key(), dns_names, ips, when)
    files = {
        CA_KEY: (key_pem(ca_key), KEY_MODE),
        CA_CERT: (cert_pem(ca.certificate), CERT_MODE),
        SERVER_KEY: (key_pem(server_key), KEY_MODE),
        SERVER_CERT: (cert_pem(server), CERT_MODE),
    }
    try:
        pki_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        # mkdir's mode is narrowed by the umask, and an existing directory keeps its own.
        os.chmod(pki_dir, DIR_MODE)
        write_all(pki_dir, files)
    except OSError as exc:
        raise PkiError(os_problem("cannot write", exc, pki_dir)) from None
    return CaFiles(
        pki_dir,
        pki_dir / CA_KEY,
        pki_dir / CA_CERT,
        pki_dir / SERVER_KEY,
        pki_dir / SERVER_CERT,
        ca.certificate,
        server,
        replaced=bool(existing),
    )


def check_names(names: list[str], addresses: list[str]) -> tuple[list[str], list[IpAddress]]:
    """The server certificate's DNS names and addresses, checked, without repeats."""
    dns_names = _unique(check_dns_name(name) for name in names)
    ips = _unique(check_address(address) for address in addresses)
    if not dns_names and not ips:
        raise PkiError("the server certificate needs at least one DNS name or IP address")
    return dns_names, ips


def check_dns_name(name: str) -> str:
    """``name`` in lower case if it is a DNS name (no wildcards); PkiError if not."""
    if _is_ip(name):
        raise PkiError(f"{name!r} is an IP address, not a DNS name: give it as an address")
    if len(name) > _DNS_MAX or not all(_DNS_LABEL.fullmatch(part) for part in name.split(".")):
        raise PkiError(
            f"{name!r} is not a valid DNS name (dot-separated labels of letters, digits "
            "and '-', at most 63 characters each)"
        )
    return name.lower()


def check_address(value: str) -> IpAddress:
    """``value`` as an IPv4 or IPv6 address; PkiError if it is not one."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise PkiError(f"{value!r} is not an IP address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise PkiError(f"{value!r} has a zone (%...), which a certificate cannot hold")
    return address


def ca_certificate(key: ec.EllipticCurvePrivateKey, now: dt.datetime) -> x509.Certificate:
    # A tag in the name tells this CA from the one it replaces, in logs and on devices.
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SchoolFleet"),
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"SchoolFleet CA {now:%Y-%m-%d} {secrets.token_hex(4)}"
            ),
        ]
    )
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def server_certificate(
    ca: CertificateAuthority,
    public: ec.EllipticCurvePublicKey,
    dns_names: list[str],
    ips: list[IpAddress],
    now: dt.datetime,
) -> x509.Certificate:
    first = dns_names[0] if dns_names else str(ips[0])
    alt_names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    alt_names += [x509.IPAddress(ip) for ip in ips]
    return issue(
        ca,
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, first)]),
        public,
        now,
        now + dt.timedelta(days=SERVER_DAYS),
        [
            x509.SubjectAlternativeName(alt_names),
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
        ],
    )


# --- reading the CA --------------------------------------------------------------------


def load_ca(pki_dir: Path) -> CertificateAuthority:
    """Reads ``ca.key`` and ``ca.crt`` and checks they belong together."""
    return load_ca_pair(pki_dir / CA_KEY, pki_dir / CA_CERT)


def load_ca_pair(key_path: Path, cert_path: Path) -> CertificateAuthority:
    """Reads a CA's key and certificate and checks they belong together."""
    key_pem = _read(key_path, private=True)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise PkiError(f"{key_path} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{key_path} is not an EC private key")
    cert = load_cert(cert_path)
    if _spki(cert.public_key()) != _spki(key.public_key()):
        raise PkiError(f"{cert_path} does not match the key in {key_path}")
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except (x509.ExtensionNotFound, x509.DuplicateExtension, ValueError):
        is_ca = False
    if not is_ca:
        raise PkiError(f"{cert_path} is not a CA certificate")
    return CertificateAuthority(key, cert)


def fingerprint(cert: x509.Certificate) -> str:
    """The certificate's SHA-256 fingerprint as colon-separated hex, as openssl shows it."""
    return ":".join(f"{byte:02X}" for byte in cert.fingerprint(hashes.SHA256()))


def load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read(path, private=False))
    except ValueError:
        raise PkiError(f"{path} is not a PEM certificate") from None


def _read(path: Path, *, private: bool) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        with open(fd, "rb") as file:
            # Checked on the open file, so it is the same file that is read.
            mode = stat.S_IMODE(os.fstat(file.fileno()).st_mode)
            if private and mode & 0o077:
                raise PkiError(
                    f"{path} is open to group or others (mode {mode:04o}): it must be "
                    f"{KEY_MODE:04o} (chmod {KEY_MODE:o} {path})"
                )
            return file.read()
    except FileNotFoundError:
        raise PkiError(f"{path} does not exist: run 'schoolfleet-controller init' first") from None
    except OSError as exc:
        raise PkiError(os_problem("cannot read", exc, path)) from None


# --- shared ----------------------------------------------------------------------------


def issue(
    ca: CertificateAuthority,
    subject: x509.Name,
    public: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    now: dt.datetime,
    not_after: dt.datetime,
    extensions: list[x509.ExtensionType],
) -> x509.Certificate:
    """An end-entity certificate signed by ``ca``; ``extensions`` are not critical."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(ca.key, hashes.SHA256())


def _key_usage(
    *, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def write_all(
    directory: Path, files: dict[str, tuple[bytes, int]], owner: tuple[int, int] | None = None
) -> None:
    """Writes every file to a temporary name first, then renames them all: a failure
    while writing leaves the old files as they were."""
    staged: list[tuple[Path, Path]] = []
    try:
        for name, (data, mode) in files.items():
            staged.append((_stage(directory / name, data, mode, owner), directory / name))
        for temporary, final in staged:
            os.replace(temporary, final)
    finally:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)  # the renames survive a power cut
    finally:
        os.close(dir_fd)


def _stage(final: Path, data: bytes, mode: int, owner: tuple[int, int] | None) -> Path:
    temporary = final.with_name(f".{final.name}.{secrets.token_hex(4)}.tmp")
    # Created with its final mode, so a key is never readable by others, not even briefly.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with open(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)  # exactly this mode, whatever the umask
            if owner is not None:
                os.fchown(file.fileno(), *owner)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _spki(public: CertificatePublicKeyTypes) -> bytes:
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def os_problem(doing: str, exc: OSError, fallback: Path) -> str:
    return f"{doing} {exc.filename or fallback}: {exc.strerror or exc}"


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _unique(values: Iterable[_T]) -> list[_T]:
    return list(dict.fromkeys(values))


def utc(now: dt.datetime | None) -> dt.datetime:
    # X.509 times have whole seconds.
    when = dt.datetime.now(dt.UTC) if now is None else now.astimezone(dt.UTC)
    return when.replace(microsecond=0)
