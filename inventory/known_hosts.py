"""The lines of an OpenSSH known_hosts file that speak of some addresses.

Pure: the file's text and the addresses in, its lines for those addresses out. The
controller hands a user the host keys of the devices they may see, and no others: a
plain line is kept when one of its host names is such an address (``198.18.0.5`` or
``[198.18.0.5]:22``), a hashed one (``|1|salt|hash``, ``ssh-keygen -H``) when the hash
of one of them matches; ``@revoked`` lines are kept alike. ``@cert-authority`` lines
name patterns, not hosts: kept only where every line is (``addresses`` None).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable

_HASHED = "|1|"
_MARKERS = ("@revoked", "@cert-authority")


def _names(field: str) -> list[str]:
    """``a,[b]:22`` -> ["a", "b"]: a host name with the port dropped when it is 22
    (another port is another host for ssh, so it stays as written)."""
    return [
        name[1:-4] if name.startswith("[") and name.endswith("]:22") else name
        for name in field.split(",")
    ]


def _hashed_match(field: str, addresses: Iterable[str]) -> bool:
    try:
        salt_text, digest_text = field[len(_HASHED) :].split("|", 1)
        salt, digest = base64.b64decode(salt_text), base64.b64decode(digest_text)
    except (ValueError, binascii.Error):
        return False
    return any(
        hmac.compare_digest(hmac.new(salt, a.encode(), hashlib.sha1).digest(), digest)
        for a in addresses
    )


def lines_for(text: str, addresses: Iterable[str] | None) -> list[str]:
    """The lines of ``text`` for ``addresses`` (None: every key line), in file order,
    without comments or blank lines."""
    wanted = None if addresses is None else frozenset(addresses)
    kept = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        marker = fields[0] if fields[0] in _MARKERS else ""
        hosts = fields[1 if marker else 0]
        if len(fields) < (4 if marker else 3):
            continue
        if wanted is None:
            kept.append(line)
        elif marker == "@cert-authority":
            continue
        elif hosts.startswith(_HASHED):
            if _hashed_match(hosts, wanted):
                kept.append(line)
        elif wanted.intersection(_names(hosts)):
            kept.append(line)
    return kept
