"""Enrollment tokens: minting limits, hashing, and the store."""

from __future__ import annotations

import pytest

from common.secret_hash import hash_secret
from controller.enroll.tokens import PREFIX, mint, token_id
from controller.errors import ProtocolError
from controller.stores import Stores
from inventory.model import valid_id

T0 = 1_800_000_000.0


@pytest.fixture
def store(both_stores: Stores) -> Stores:
    return both_stores


def test_every_token_id_is_a_valid_id() -> None:
    # Names are used in `schoolctl enroll token revoke ID`: none may be refused there.
    assert all(valid_id(mint("s1", 0, 0, T0)[0].token_id) for _ in range(2000))


def test_a_minted_token_has_a_secret_only_its_hash_is_kept_of() -> None:
    token, secret = mint("s1", 0, 0, T0)
    assert secret.startswith(PREFIX) and len(secret) > 40
    assert token.token_id == token_id(secret) and token.token_id in secret
    assert (token.uses_left, token.expires_at) == (1, T0 + 7 * 86400)
    assert hash_secret(secret) != secret.encode() and len(hash_secret(secret)) == 32
    assert token.usable(T0) and not token.usable(T0 + 7 * 86400)
    other, other_secret = mint("s1", 0, 0, T0)
    assert other_secret != secret and other.token_id != token.token_id


@pytest.mark.parametrize(
    ("school", "uses", "valid", "message"),
    [
        ("bad id!", 1, 3600, "school id 'bad id!' is not valid"),
        ("s1", 10_001, 3600, "uses must be 1 to 10000, got 10001"),
        ("s1", 1, 59, "valid 1 minute to 365 days, got 59 seconds"),
        ("s1", 1, 366 * 86400, "got 31622400 seconds"),
    ],
)
def test_limits_are_named(school: str, uses: int, valid: int, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        mint(school, uses, valid, T0)


def test_tokens_are_stored_listed_and_revoked(store: Stores) -> None:
    a, secret_a = mint("s1", 3, 3600, T0)
    b, secret_b = mint("s2", 1, 3600, T0 + 1)
    store.enrollments.add_enroll_token(a, hash_secret(secret_a))
    store.enrollments.add_enroll_token(b, hash_secret(secret_b))
    assert store.enrollments.list_enroll_tokens(None) == [b, a]
    assert store.enrollments.list_enroll_tokens("s1") == [a]
    revoked = store.enrollments.revoke_enroll_token(a.token_id, T0 + 5)
    assert revoked is not None and revoked.revoked_at == T0 + 5 and not revoked.usable(T0 + 6)
    again = store.enrollments.revoke_enroll_token(a.token_id, T0 + 9)
    assert again is not None and again.revoked_at == T0 + 5
    assert store.enrollments.revoke_enroll_token("nosuch", T0) is None
