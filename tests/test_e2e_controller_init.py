"""`schoolfleet-controller init` as an operator runs it: files, output, refusals."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from controller.enroll.pki import fingerprint
from tests.procs import BIN, Result

pytestmark = pytest.mark.e2e


def controller_init(*args: str) -> Result:
    done = subprocess.run(
        [str(BIN / "schoolfleet-controller"), "init", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_creates_the_ca_and_refuses_to_do_it_twice(tmp_path: Path) -> None:
    data = tmp_path / "data"
    pki = data / "pki"
    first = controller_init(
        "--data-dir", str(data), "--name", "controller.test", "--address", "198.18.0.1", "--json"
    )
    assert (first.code, first.err) == (0, "")
    created = first.json()
    assert created["pki_dir"] == str(pki)
    assert created["ca_key"] == str(pki / "ca.key")
    assert created["server_names"] == ["controller.test"]
    assert created["server_addresses"] == ["198.18.0.1"]
    assert created["replaced"] is False
    assert mode(pki) == 0o700
    assert (mode(pki / "ca.key"), mode(pki / "server.key")) == (0o600, 0o600)
    assert (mode(pki / "ca.crt"), mode(pki / "server.crt")) == (0o644, 0o644)
    ca_cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    assert created["ca_fingerprint_sha256"] == fingerprint(ca_cert)

    again = controller_init("--data-dir", str(data), "--name", "controller.test")
    assert again.code == 2
    assert again.out == ""
    assert again.err.splitlines() == [
        f"schoolfleet-controller: {pki / 'ca.key'} already exists: a new CA means every "
        "device would have to re-enroll (use --force to replace it)"
    ]
    assert x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes()) == ca_cert

    forced = controller_init("--data-dir", str(data), "--address", "198.18.0.2", "--force")
    assert (forced.code, forced.err) == (0, "")
    assert forced.out.startswith(f"Replaced the controller's certificate authority in {pki}:")
    assert "CA fingerprint (SHA-256): " in forced.out
    assert "Every device enrolled with the old CA must enroll again." in forced.out
    new_ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    assert fingerprint(new_ca) in forced.out
    assert new_ca != ca_cert


def test_a_bad_address_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = controller_init("--data-dir", str(tmp_path), "--address", "not-an-ip")
    assert done.code == 2
    assert done.out == ""
    assert done.err.splitlines() == ["schoolfleet-controller: 'not-an-ip' is not an IP address"]
    assert not (tmp_path / "pki").exists()


def test_nothing_to_name_the_server_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = controller_init("--data-dir", str(tmp_path))
    assert done.code == 2
    assert done.err.splitlines() == [
        "schoolfleet-controller: the server certificate needs at least one DNS name or IP address"
    ]


def test_help_names_the_default_data_dir() -> None:
    done = controller_init("--help")
    assert done.code == 0
    assert "/var/lib/schoolfleet" in done.out
