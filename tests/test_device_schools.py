"""A device's school: which token may enroll it, which certificate opens its stream,
and what a move between schools changes in the store."""

from __future__ import annotations

from dataclasses import replace

import pytest

from common.secret_hash import hash_secret
from controller.enroll.tokens import device_refusal, mint, taken
from controller.errors import EnrollRefused, HostsClaimed
from controller.fleet.admission import stream_refusal
from controller.rollouts.store import NewHost
from controller.store.rows import CommandResultRow
from controller.stores import Stores
from inventory.model import Enrollment
from inventory.rollouts import LessonRates, RolloutSpec
from tests.test_store_sqlite import T0, ident, store  # noqa: F401  (fixture)

ENROLLED = Enrollment("panel-1", "s1", "ab12", T0 + 86400, T0, "tok1")


# --- which token may enroll a device -------------------------------------------------------


@pytest.mark.parametrize(
    ("enrolled_school", "open_to_reenroll", "seen_school", "allowed"),
    [
        (None, False, None, True),  # a new device
        (None, False, "s1", True),  # seen on plaintext streams in the token's school
        (None, False, "s2", False),  # seen in another school
        ("s1", True, None, True),  # its school's IT opened it
        ("s1", False, None, False),  # enrolled and not open
        ("s2", True, None, False),  # open, but in another school: the takeover
        ("s2", False, None, False),
    ],
)
def test_a_token_enrolls_only_its_own_schools_devices(
    enrolled_school: str | None, open_to_reenroll: bool, seen_school: str | None, allowed: bool
) -> None:
    refused = device_refusal("panel-1", "s1", enrolled_school, open_to_reenroll, seen_school)
    assert (refused is None) == allowed
    if refused is not None:
        # One answer whatever the reason, naming no school.
        assert (str(refused), refused.status) == (str(taken("panel-1")), "ALREADY_EXISTS")
        assert "s2" not in str(refused)


# --- which certificate opens a stream ------------------------------------------------------


@pytest.mark.parametrize(
    ("school", "serial", "enrolled", "reason"),
    [
        ("s1", "ab12", ENROLLED, None),
        ("s1", "ab12", None, "not_enrolled"),
        ("s2", "ab12", ENROLLED, "wrong_school"),
        ("s1", "ff00", ENROLLED, "replaced_certificate"),
        ("s1", "ab12", replace(ENROLLED, revoked_at=T0 + 5), "decommissioned"),
        # Open to re-enroll: its certificate stands until it does.
        ("s1", "ab12", replace(ENROLLED, reenroll=True), None),
        # Without agent TLS (a lab) there is no certificate to check.
        (None, None, None, None),
        (None, None, ENROLLED, None),
        (None, None, replace(ENROLLED, revoked_at=T0 + 5), "decommissioned"),
    ],
)
def test_only_the_enrollments_current_certificate_opens_a_stream(
    school: str | None, serial: str | None, enrolled: Enrollment | None, reason: str | None
) -> None:
    refusal = stream_refusal("panel-1", school, serial, enrolled)
    assert (refusal.reason if refusal else None) == reason
    if refusal is not None:
        assert "\n" not in refusal.message and "panel-1" in refusal.message


def test_a_wrong_school_is_refused_without_naming_the_enrolled_one() -> None:
    refusal = stream_refusal("panel-1", "s2", "ab12", replace(ENROLLED, school_id="s-secret"))
    assert refusal is not None and "s-secret" not in refusal.message


# --- the store -----------------------------------------------------------------------------


def _token(store: Stores, school: str) -> bytes:  # noqa: F811
    token, secret = mint(school, 5, 3600, T0)
    store.enrollments.add_enroll_token(token, hash_secret(secret))
    return hash_secret(secret)


def test_the_store_refuses_another_schools_token_in_the_enrolling_transaction(
    store: Stores,  # noqa: F811
) -> None:
    store.enrollments.enroll(_token(store, "s1"), ENROLLED, T0)
    store.enrollments.allow_reenroll("panel-1")
    foreign = _token(store, "s2")
    with pytest.raises(EnrollRefused) as refused:
        store.enrollments.enroll(foreign, replace(ENROLLED, school_id="s2", serial="cd34"), T0 + 1)
    assert refused.value.status == "ALREADY_EXISTS"
    assert store.enrollments.get_enrollment("panel-1") == replace(ENROLLED, reenroll=True)
    # A device seen on plaintext streams in s1 only: no s2 token takes it either.
    store.devices.device_connected(ident("panel-2", "s1"), 1, 60.0, T0)
    with pytest.raises(EnrollRefused):
        store.enrollments.enroll(
            foreign, replace(ENROLLED, device_id="panel-2", school_id="s2"), T0 + 1
        )
    assert store.enrollments.get_enrollment("panel-2") is None
    # Neither refusal took a use of the token.
    (token,) = store.enrollments.list_enroll_tokens("s2")
    assert token.uses == 0


def test_a_move_puts_the_device_in_its_new_school_open_to_enroll_there(
    store: Stores,  # noqa: F811
) -> None:
    store.enrollments.enroll(_token(store, "s1"), ENROLLED, T0)
    store.devices.device_connected(ident("panel-1", "s1"), 1, 60.0, T0)
    store.devices.record_messages([CommandResultRow("panel-1", 1, T0, "cmd-1", "ok", "done", T0)])
    moved = store.enrollments.move_device("panel-1", "s2", T0 + 10)
    assert moved is not None and (moved.from_school, moved.to_school) == ("s1", "s2")
    assert store.enrollments.get_enrollment("panel-1") == replace(
        ENROLLED, school_id="s2", reenroll=True
    )
    device = store.devices.get_device("panel-1", T0 + 10)
    assert device is not None
    assert (device.identity.school_id, device.identity.room_id) == ("s2", "")
    assert store.devices.command_results("panel-1", 10) == []
    # The old school's token cannot take it back; the new school's enrolls it.
    with pytest.raises(EnrollRefused):
        store.enrollments.enroll(_token(store, "s1"), replace(ENROLLED, serial="cd34"), T0 + 11)
    again = replace(ENROLLED, school_id="s2", serial="cd34", enrolled_at=T0 + 12)
    store.enrollments.enroll(_token(store, "s2"), again, T0 + 12)
    assert store.enrollments.get_enrollment("panel-1") == again


def test_a_move_of_no_device_or_to_its_own_school_changes_nothing(
    store: Stores,  # noqa: F811
) -> None:
    assert store.enrollments.move_device("panel-none", "s2", T0) is None
    store.enrollments.enroll(_token(store, "s1"), ENROLLED, T0)
    same = store.enrollments.move_device("panel-1", "s1", T0)
    assert same is not None and same.from_school == same.to_school == "s1"
    assert store.enrollments.get_enrollment("panel-1") == ENROLLED


def test_a_device_in_an_unfinished_rollout_is_not_moved(
    store: Stores,  # noqa: F811
) -> None:
    store.enrollments.enroll(_token(store, "s1"), ENROLLED, T0)
    spec = RolloutSpec("timesync.yml", "school=s1")
    rollout = store.rollouts.create_rollout(
        spec, [NewHost("panel-1", "s1")], "ana", T0, LessonRates(0, 0)
    )
    with pytest.raises(HostsClaimed, match=f"rollout {rollout}"):
        store.enrollments.move_device("panel-1", "s2", T0)
    assert store.enrollments.get_enrollment("panel-1") == ENROLLED
