"""Which hosts lesson content may come from: one rule for the controller's schedule
checks and the panel's launcher.

A host is allowed if it is an entry of the list or a subdomain of one; names are
compared in their ASCII (IDNA) form, case and a final dot aside; an IP address
matches only itself (10.0.0.1 is no subdomain of an entry "0.0.1").
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Collection


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def ascii_host(name: str) -> str | None:
    """The name's comparable form; None if it has no IDNA form."""
    name = name.strip().rstrip(".").lower()
    if name.isascii():
        return name
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return None


def host_allowed(host: str, hosts: Collection[str]) -> bool:
    """Whether ``host`` is one of ``hosts`` or a subdomain of one."""
    name = ascii_host(host)
    if not name:
        return False
    for entry in map(ascii_host, hosts):
        if not entry:
            continue
        if name == entry:
            return True
        if not is_ip(entry) and not is_ip(name) and name.endswith("." + entry):
            return True
    return False


def url_allowed(url: str, hosts: Collection[str]) -> str | None:
    """None if ``url`` may be shown; otherwise why not, in a line for people.

    Allowed: an http or https URL whose host is one of ``hosts`` or a subdomain of
    one. Names are compared in their ASCII (IDNA) form, case and a final dot aside.
    The URL itself is never quoted back: it may carry a token.
    """
    try:
        host = _url_host(url)
    except ValueError as exc:
        return str(exc)
    if not any(map(ascii_host, hosts)):
        return "no content hosts are allowed: the controller sent none"
    if host_allowed(host, hosts):
        return None
    return f"host {host!r} is not one of the content hosts"


def _url_host(url: str) -> str:
    """The host of an http(s) URL; ValueError saying what is wrong with it."""
    # Refused outright rather than parsed: urlsplit strips some of these, and an
    # argv item with a NUL cannot be passed to exec at all.
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise ValueError("URL contains spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        host, _ = parts.hostname, parts.port  # .port checks the port's range
    except ValueError as exc:
        raise ValueError(f"URL cannot be parsed: {exc}") from None
    if parts.scheme not in ("https", "http"):
        raise ValueError(f"scheme {parts.scheme or '(none)'!r} is not allowed, only https and http")
    if not host:
        raise ValueError("URL has no host")
    # As the schedule import does: user@host hides the real host from a reader.
    if parts.username is not None or parts.password is not None:
        raise ValueError("URL carries a user name or password")
    return host
