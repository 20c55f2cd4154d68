"""The device's key work for renewal, run as its own short process.

``python -m agent.cert_tool csr CERT_DIR DEVICE_ID`` makes a new key in
``CERT_DIR/device.key.next`` (0600, never sent anywhere) and prints a certificate
request for it; ``... install CERT_DIR`` checks that ``device.crt.next`` (the
controller's answer) is for that key and puts both in place of ``device.key`` and
``device.crt``. In a process of their own, so the agent never loads cryptography
(~11 MiB) for something it does once in a year and a half.

``finish`` completes a switch that a power cut interrupted, at the agent's start.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

KEY_FILE, CERT_FILE = "device.key", "device.crt"
NEXT_KEY, NEXT_CERT = "device.key.next", "device.crt.next"


class CertToolError(Exception):
    """A renewal step that could not be done; the message is one line."""


def make_csr(cert_dir: Path, device_id: str) -> bytes:
    """A new key in ``device.key.next`` and a CSR for it naming ``device_id``."""
    from agent.enroll import key_and_csr, write_file

    key_pem, csr_pem = key_and_csr(device_id)
    write_file(cert_dir / NEXT_KEY, key_pem, 0o600)
    return csr_pem


def install(cert_dir: Path) -> None:
    """Puts the renewed key and certificate in place, if they belong together."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    key_path, cert_path = cert_dir / NEXT_KEY, cert_dir / NEXT_CERT
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise CertToolError(f"renewed key or certificate not readable: {exc}") from None
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(der, spki) != key.public_key().public_bytes(der, spki):
        cert_path.unlink(missing_ok=True)
        raise CertToolError("the renewed certificate is not for the key made for it")
    # The key first: a cut between the two renames is finished by `finish`.
    os.replace(key_path, cert_dir / KEY_FILE)
    os.replace(cert_path, cert_dir / CERT_FILE)


def finish(cert_dir: Path) -> bool:
    """Completes a switch interrupted by a crash; whether there was one."""
    if not (cert_dir / NEXT_CERT).exists():
        return False
    if (cert_dir / NEXT_KEY).exists():
        try:
            install(cert_dir)
        except CertToolError:
            return False
    else:
        # The key was moved already: its certificate follows.
        os.replace(cert_dir / NEXT_CERT, cert_dir / CERT_FILE)
    return True


def main(argv: list[str]) -> int:
    try:
        if len(argv) == 3 and argv[0] == "csr":
            sys.stdout.buffer.write(make_csr(Path(argv[1]), argv[2]))
            return 0
        if len(argv) == 2 and argv[0] == "install":
            install(Path(argv[1]))
            return 0
    except (CertToolError, OSError) as exc:
        print(f"cert_tool: {exc}", file=sys.stderr)
        return 1
    print(
        "usage: python -m agent.cert_tool csr CERT_DIR DEVICE_ID | install CERT_DIR",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
