"""schoolctl enroll token create / list / revoke against a real controller."""

from __future__ import annotations

import pytest

from tests.procs import Controller, schoolctl

pytestmark = pytest.mark.e2e


def test_create_list_revoke_and_the_secret_is_shown_once(controller: Controller) -> None:
    address = controller.address
    created = schoolctl(address, "enroll", "token", "create", "--school", "1234", "--uses", "30")
    assert created.code == 0, created.err
    secret = created.out.strip()
    assert secret.startswith("sfe_")
    assert "30 use(s)" in created.err and "not shown again" in created.err

    as_json = schoolctl(address, "enroll", "token", "create", "--school", "77", "--json")
    other = as_json.json()
    assert other["school_id"] == "77" and other["secret"].startswith("sfe_")

    listed = schoolctl(address, "enroll", "token", "list", "--json")
    tokens = {t["token_id"]: t for t in listed.json()}
    assert set(tokens) == {secret[4:12], other["token_id"]}
    assert secret not in listed.out and other["secret"] not in listed.out
    assert tokens[secret[4:12]]["uses_left"] == 30
    only = schoolctl(address, "enroll", "token", "list", "--school", "77", "--json").json()
    assert [t["token_id"] for t in only] == [other["token_id"]]

    revoked = schoolctl(address, "enroll", "token", "revoke", secret[4:12])
    assert revoked.code == 0 and "revoked" in revoked.out
    table = schoolctl(address, "enroll", "token", "list")
    row = next(line for line in table.out.splitlines() if line.startswith(secret[4:12]))
    assert "revoked" in row


def test_bad_input_is_one_line_each(controller: Controller) -> None:
    address = controller.address
    cases = [
        (["create", "--school", "1234", "--expires", "7x"], 2, "'7x' is not a duration"),
        (["create", "--school", "1234", "--expires", "400d"], 2, "1 minute to 365 days"),
        (["create", "--school", "1234", "--uses", "0"], 2, "--uses"),
        (["create", "--school", "no good"], 2, "school id 'no good' is not valid"),
        (["revoke", "nosuch"], 4, "no enroll token 'nosuch'"),
    ]
    for args, code, message in cases:
        done = schoolctl(address, "enroll", "token", *args)
        assert done.code == code, (args, done.err)
        assert message in done.err, (args, done.err)
        assert "Traceback" not in done.err
    assert schoolctl(address, "enroll", "token", "list", "--json").json() == []
