"""The Debian programs some tests run, found or failed in one way: a missing one fails
the test in one line naming its package (`make test` installs them; .ci/packages.sh)."""

from __future__ import annotations

import shutil

import pytest

_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def need(command: str, package: str) -> str:
    """The path of ``command``; fails the test if Debian's ``package`` is missing."""
    found = shutil.which(command) or shutil.which(command, path=_PATH)
    if found is None:
        pytest.fail(
            f"{command} is missing: Debian package {package} "
            "(make packages installs it as root, or names the command)",
            pytrace=False,
        )
    return found
