"""The lines of the controller's known_hosts a user gets: those of their devices only."""

from __future__ import annotations

import base64
import hashlib
import hmac

from inventory.known_hosts import lines_for

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH"


def hashed(address: str, salt: bytes = b"0123456789abcdefghij") -> str:
    digest = hmac.new(salt, address.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


FILE = f"""\
# the controller's devices
198.18.0.5 {KEY}a
198.18.0.6,[198.18.0.7]:22 {KEY}b
[198.18.0.8]:2222 {KEY}c

{hashed("198.18.0.9")} {KEY}d
@revoked 198.18.0.5 {KEY}old
@cert-authority *.school.city {KEY}ca
198.18.0.10
|1|not-base64|x {KEY}e
"""


def test_only_lines_for_the_addresses_given() -> None:
    assert lines_for(FILE, ["198.18.0.5"]) == [
        f"198.18.0.5 {KEY}a",
        f"@revoked 198.18.0.5 {KEY}old",
    ]
    assert lines_for(FILE, ["198.18.0.7"]) == [f"198.18.0.6,[198.18.0.7]:22 {KEY}b"]
    # Port 2222 is another host for ssh: its key is not the address's on port 22.
    assert lines_for(FILE, ["198.18.0.8"]) == []
    assert lines_for(FILE, ["198.18.0.9"]) == [f"{hashed('198.18.0.9')} {KEY}d"]
    assert lines_for(FILE, []) == []


def test_every_key_line_for_a_caller_of_every_school() -> None:
    got = lines_for(FILE, None)
    assert len(got) == 7
    assert f"@cert-authority *.school.city {KEY}ca" in got
    # No comments, blank lines or lines without a key.
    assert not [line for line in got if line.startswith("#") or line == "198.18.0.10"]
