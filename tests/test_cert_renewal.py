"""Renewal's decisions and the files behind CA rotation, without processes."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent import cert_tool
from common.secret_hash import hash_secret
from controller.enroll import ca_rotation, tokens
from controller.enroll.ca_keeper import CaKeeper
from controller.enroll.cert_store import Renewed
from controller.enroll.device_certs import sign_device_csr
from controller.enroll.pki import init_ca, load_ca
from controller.enroll.renewal import renew_in, renewal_key, spki
from controller.errors import PkiError
from controller.stores import Stores
from inventory.model import Enrollment

DAY = 86_400.0


def test_a_device_renews_two_thirds_into_its_certificate() -> None:
    issued, lifetime = 1_000_000.0, 825 * DAY
    due = renew_in(
        issued, issued, issued + lifetime, device_id="p", rotation_started=None, spread=DAY
    )
    assert due == pytest.approx(550 * DAY)
    # Late (a device off for months): at once, never a negative wait.
    late = issued + 700 * DAY
    assert (
        renew_in(late, issued, issued + lifetime, device_id="p", rotation_started=None, spread=DAY)
        == 0
    )


def test_during_a_rotation_each_device_has_its_own_stable_moment_in_the_spread() -> None:
    issued, started = 0.0, 100 * DAY
    moments = {
        device: renew_in(
            started, issued, 825 * DAY, device_id=device, rotation_started=started, spread=DAY
        )
        for device in (f"panel-{i}" for i in range(200))
    }
    assert all(0 <= m < DAY for m in moments.values())
    # Spread over the day, not bunched (200 devices, at least 150 distinct minutes).
    assert len({int(m // 60) for m in moments.values()}) > 150
    # Asked again an hour later, a device's moment has not moved.
    later = renew_in(
        started + 3600, issued, 825 * DAY, device_id="panel-7", rotation_started=started, spread=DAY
    )
    assert later == pytest.approx(max(0.0, moments["panel-7"] - 3600))


def _csr(key: ec.EllipticCurvePrivateKey, cn: str = "panel-1") -> bytes:
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def test_a_renewal_needs_a_new_key_and_this_device_s_name() -> None:
    current, new = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    held = spki(current.public_key())
    assert spki(renewal_key(_csr(new), "panel-1", "1234", held)) == spki(new.public_key())
    with pytest.raises(PkiError, match="current key"):
        renewal_key(_csr(current), "panel-1", "1234", held)
    with pytest.raises(PkiError, match="names device 'panel-2'"):
        renewal_key(_csr(new, "panel-2"), "panel-1", "1234", held)
    with pytest.raises(PkiError, match="over 8192 bytes"):
        renewal_key(b"x" * 9000, "panel-1", "1234", held)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    init_ca(tmp_path / "pki", ["controller.test"], ["198.18.0.1"])
    return tmp_path / "pki"


def test_a_retirement_cut_short_after_its_renames_reads_as_done(pki: Path) -> None:
    cas = ca_rotation.add_next(pki)
    assert cas.next is not None and len(cas.trusted) == 2
    # Power cut after the renames, before ca-next.* were removed.
    shutil.copy(pki / "ca-next.key", pki / "spare.key")
    shutil.copy(pki / "ca-next.crt", pki / "spare.crt")
    done = ca_rotation.retire_old(pki)
    shutil.copy(pki / "spare.key", pki / "ca-next.key")
    shutil.copy(pki / "spare.crt", pki / "ca-next.crt")
    (pki / "ca-next.key").chmod(0o600)
    again = ca_rotation.load_ca_set(pki)
    assert again.next is None
    assert ca_rotation.ca_id(again.current.certificate) == ca_rotation.ca_id(done.current)
    # The server certificate is the new CA's, for the same names.
    assert done.server.issuer == done.current.subject
    assert ca_rotation.server_names(done.server) == (["controller.test"], ["198.18.0.1"])


def test_the_running_controller_keeps_the_last_good_files_while_a_change_is_half_written(
    pki: Path,
) -> None:
    keeper = CaKeeper(pki)
    first = keeper.cas()
    ca_rotation.add_next(pki)
    # A next CA's key beside another CA's certificate: not taken, the old set stays.
    shutil.copy(pki / "ca.crt", pki / "ca-next.crt")
    assert not keeper.refresh()
    assert keeper.cas() is first
    assert not keeper.refresh()  # looked at once per change
    # Once the files belong together again, they are taken.
    (pki / "ca-next.crt").unlink()
    (pki / "ca-next.key").unlink()
    ca_rotation.add_next(pki)
    assert keeper.refresh()
    assert keeper.cas().next is not None


def test_a_switch_cut_short_on_the_device_is_finished_at_the_next_start(
    tmp_path: Path, pki: Path
) -> None:
    ca = load_ca(pki)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert = sign_device_csr(ca, _csr(key), "panel-1", "1234", lifetime=dt.timedelta(hours=1)).pem
    device = tmp_path / "device"
    device.mkdir()
    (device / "device.key").write_bytes(b"old key")
    (device / "device.crt").write_bytes(b"old cert")
    # Cut after the key moved into place, before the certificate followed.
    (device / "device.key").write_bytes(pem)
    (device / "device.crt.next").write_bytes(cert)
    assert cert_tool.finish(device)
    assert (device / "device.crt").read_bytes() == cert
    assert not cert_tool.finish(device)
    # A certificate for another key is never put beside this one.
    (device / "device.key.next").write_bytes(pem)
    other = ec.generate_private_key(ec.SECP256R1())
    (device / "device.crt.next").write_bytes(
        sign_device_csr(ca, _csr(other), "panel-1", "1234", lifetime=dt.timedelta(hours=1)).pem
    )
    with pytest.raises(cert_tool.CertToolError, match="not for the key"):
        cert_tool.install(device)
    assert (device / "device.crt").read_bytes() == cert
    assert not (device / "device.crt.next").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root writes files for another user")
def test_files_root_writes_for_the_controller_belong_to_the_controller_s_user(pki: Path) -> None:
    os.chown(pki, 65534, 65534)
    ca_rotation.add_next(pki)
    ca_rotation.reissue_server_cert(pki, [], [])
    ca_rotation.retire_old(pki)
    written = [pki / n for n in ("ca.key", "ca.crt", "server.key", "ca-bundle.crt")]
    written += [pki / "retired", *(pki / "retired").iterdir()]
    assert {(p.stat().st_uid, p.stat().st_gid) for p in written} == {(65534, 65534)}


def test_the_store_switches_to_a_renewal_once_and_never_after_a_new_enrollment(
    both_stores: Stores,
) -> None:
    store = both_stores
    for serial in ("a1", "c3"):
        token, secret = tokens.mint("1234", 1, 3600, 1000.0)
        store.enrollments.add_enroll_token(token, hash_secret(secret))
        if serial == "c3":
            store.enrollments.allow_reenroll("panel-1")
        store.enrollments.enroll(
            hash_secret(secret),
            Enrollment("panel-1", "1234", serial, 5000.0, 1000.0, token.token_id),
            1000.0,
        )
        if serial == "a1":
            # Only for the certificate in use; then the switch happens once.
            assert not store.enrollments.add_renewal(
                "panel-1", "zz", Renewed("b2", 9000.0, 2000.0, "x")
            )
            assert store.enrollments.add_renewal(
                "panel-1", "a1", Renewed("b2", 9000.0, 2000.0, "ca-2")
            )
            assert store.enrollments.cert_state("panel-1").next_serial == "b2"  # type: ignore[union-attr]
            assert store.enrollments.confirm_renewal("panel-1", "b2")
            assert not store.enrollments.confirm_renewal("panel-1", "b2")
            state = store.enrollments.cert_state("panel-1")
            assert state is not None
            assert (state.serial, state.ca_id, state.issued_at) == ("b2", "ca-2", 2000.0)
            # A renewal not yet used when the device enrolls again is void.
            assert store.enrollments.add_renewal(
                "panel-1", "b2", Renewed("d4", 9000.0, 3000.0, "ca-2")
            )
    assert not store.enrollments.confirm_renewal("panel-1", "d4")
    assert store.enrollments.get_enrollment("panel-1").serial == "c3"  # type: ignore[union-attr]
    store.enrollments.decommission("panel-1", 4000.0)
    assert not store.enrollments.add_renewal("panel-1", "c3", Renewed("e5", 9000.0, 4000.0, "ca-2"))


def test_the_server_certificate_renews_itself_two_thirds_in_for_the_same_names(pki: Path) -> None:
    server = ca_rotation.load_server_cert(pki)
    start = server.not_valid_before_utc
    assert ca_rotation.renew_server_cert_if_due(pki, start + dt.timedelta(days=480)) is None
    renewed = ca_rotation.renew_server_cert_if_due(pki, start + dt.timedelta(days=490))
    assert renewed is not None and renewed.serial_number != server.serial_number
    assert ca_rotation.server_names(renewed) == ca_rotation.server_names(server)
    assert ca_rotation.load_server_cert(pki).serial_number == renewed.serial_number
