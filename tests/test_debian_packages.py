"""`make test` on a fresh machine: the Debian packages the suite needs are installed by
the target itself as root, or named in one line with the command that installs them.

The machine here has them all; the tests hide them by giving .ci/packages.sh a view of
the programs (SCHOOLFLEET_TOOLS_PATH) where some are missing. apt-get is the one edge
replaced: a small script that records how it was called and "installs" by linking.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / ".ci" / "packages.sh"
ALL = [
    ("iproute2", "ip"),
    ("iputils-ping", "ping"),
    ("procps", "ps"),
    ("systemd", "systemd-analyze"),
    ("util-linux", "setpriv"),
    ("chromium", "chromium"),
    ("openssh-server", "sshd"),
    ("openssh-client", "ssh"),
    ("python3", "python3"),
    ("prometheus", "promtool"),
    ("postgresql", "initdb"),
    ("haproxy", "haproxy"),
]
# Where this machine's programs are: PATH's folders and, off PATH, Debian's folders of
# PostgreSQL's server programs (as .ci/packages.sh looks for them).
SYSTEM_PATH = ":".join(
    [
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        *sorted(glob.glob("/usr/lib/postgresql/*/bin")),
    ]
)
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="switches to another user (root)")


def _tools(folder: Path, present: list[str]) -> Path:
    """A folder where only ``present`` of the suite's programs are found."""
    folder.mkdir(mode=0o755, exist_ok=True)
    for command in present:
        real = shutil.which(command, path=SYSTEM_PATH)
        assert real, f"{command} should be on this machine"
        (folder / command).symlink_to(real)
    return folder


def _run(
    tools: Path, *, user: str | None = None, path: str = "/usr/bin:/bin"
) -> subprocess.CompletedProcess[str]:
    argv = [str(SCRIPT)]
    if user is not None:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    return subprocess.run(
        argv,
        env={"PATH": path, "SCHOOLFLEET_TOOLS_PATH": str(tools), "LANG": "C.UTF-8"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def public() -> Iterator[Path]:
    """A folder another user can read (pytest's own are the owner's only)."""
    folder = Path(tempfile.mkdtemp(prefix="sf-packages-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


@as_root
def test_without_root_missing_packages_stop_at_once_in_one_line(public: Path) -> None:
    tools = _tools(public / "bin", ["ip", "ps", "ssh"])
    got = _run(tools, user="65534")
    missing = [p for p, c in ALL if c not in ("ip", "ps", "ssh")]
    names = " ".join(missing)
    assert got.returncode == 2, got
    assert got.stdout == ""
    assert got.stderr == (
        f"make test needs Debian packages that are not installed: {names}; "
        f"as root run: apt-get update && apt-get install -y --no-install-recommends {names}\n"
    )


@as_root
def test_without_root_nothing_missing_says_nothing(public: Path) -> None:
    got = _run(_tools(public / "bin", [c for _, c in ALL]), user="65534")
    assert (got.returncode, got.stdout, got.stderr) == (0, "", "")


@as_root
def test_as_root_the_missing_ones_are_installed_non_interactively(tmp_path: Path) -> None:
    tools = _tools(tmp_path / "bin", ["ip", "ps"])
    calls = tmp_path / "apt-calls"
    fake = tmp_path / "fake-apt"
    fake.mkdir()
    links = "\n".join(
        f'  {package}) ln -sf "$(PATH={SYSTEM_PATH} command -v {command})" {tools}/{command} ;;'
        for package, command in ALL
    )
    (fake / "apt-get").write_text(
        "#!/bin/bash\n"
        f'echo "$DEBIAN_FRONTEND $*" >> {calls}\n'
        '[ "$1" = install ] || exit 0\n'
        'for p in "$@"; do case "$p" in\n'
        f"{links}\n"
        "esac; done\n"
    )
    (fake / "apt-get").chmod(0o755)
    got = _run(tools, path=f"{fake}:/usr/bin:/bin")
    missing = " ".join(p for p, c in ALL if c not in ("ip", "ps"))
    assert got.returncode == 0, got
    assert got.stdout.startswith(f"installing the Debian packages the tests need: {missing}")
    assert calls.read_text().splitlines() == [
        "noninteractive update -q",
        f"noninteractive install -y -q --no-install-recommends {missing}",
    ]
    # Installed now: a second run has nothing to do.
    assert _run(tools, path=f"{fake}:/usr/bin:/bin").stdout == ""
    assert len(calls.read_text().splitlines()) == 2


def test_make_test_and_ci_share_the_one_list() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "\ntest: packages " in makefile
    assert "\npackages:\n\t@.ci/packages.sh\n" in makefile
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "apt-get" not in ci and "dpkg" not in ci
    listed = re.findall(r"^  ([\w.+-]+):(\S+)", SCRIPT.read_text(), re.MULTILINE)
    assert listed == ALL


@as_root
def test_make_test_stops_before_installing_anything_without_root(public: Path) -> None:
    tools = _tools(public / "bin", [c for _, c in ALL if c != "chromium"])
    done = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "make", "test"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "SCHOOLFLEET_TOOLS_PATH": str(tools), "LANG": "C.UTF-8"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    # The one line, then make's own; no virtualenv was made or touched.
    first, *rest = done.stderr.splitlines()
    assert first.startswith("make test needs Debian packages that are not installed: chromium;")
    assert first.endswith("apt-get install -y --no-install-recommends chromium")
    assert all(line.startswith("make: ***") for line in rest), rest
    assert done.stdout == ""
