"""People over real TLS: tokens, roles, school scope, and the audit log of it all."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.procs import (
    Agent,
    Controller,
    Result,
    init_controller_ca,
    schoolctl,
    tls_env,
    wait_until,
)

pytestmark = pytest.mark.e2e


@dataclass
class City:
    c: Controller
    it1: str  # school-it of s1
    viewer: str  # reads every school

    def ctl(self, *args: str, token: str | None = None, **kw: Any) -> Result:
        ca = str(self.c.workdir / "data/pki/ca.crt")
        address = f"127.0.0.1:{self.c.enroll_port}"
        return schoolctl(address, "--ca-cert", ca, *args, token=token, **kw)


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Iterator[City]:
    """A TLS controller with panel-a (school s1) and panel-b (school s2) online."""
    tmp = tmp_path_factory.mktemp("people")
    init_controller_ca(tmp / "data")
    c = Controller(tmp, env=tls_env(tmp / "data")).start()
    agents: list[Agent] = []
    try:
        city = City(c, c.create_user("it1", "school-it", "s1").token, "")
        city.viewer = city.ctl("users", "create", "view", "--role", "viewer").out.strip()
        for device, school in (("panel-a", "s1"), ("panel-b", "s2")):
            token = city.ctl("enroll", "token", "create", "--school", school).out.strip()
            extra = {
                "enroll_token": token,
                "ca_cert": str(tmp / "data/pki/ca.crt"),
                "enroll_controller": f"127.0.0.1:{c.enroll_port}",
            }
            agents.append(Agent(tmp, device, "panel", school, "r1", c.address, extra).start())

        def both_online() -> bool:
            listed = city.ctl("devices", "list", "--status", "online", "--json")
            return listed.code == 0 and len(listed.json()) == 2

        wait_until(both_online, 30, "panel-a and panel-b online")
        yield city
    finally:
        for agent in agents:
            agent.stop()
        c.stop()


def _denied(result: Result, *words: str) -> None:
    assert result.code == 6, result
    assert result.err.count("\n") == 1 and "Traceback" not in result.err
    for word in words:
        assert word in result.err, result.err


def _hidden(result: Result, device_id: str) -> None:
    """Another school's device: answered as if there were none."""
    assert result.code == 4, result
    assert result.err == f"schoolctl: no device {device_id!r} in your schools\n", result.err


def test_school_it_sees_and_changes_only_their_schools(city: City) -> None:
    it1 = city.it1
    listed = city.ctl("devices", "list", "--json", token=it1)
    assert [d["device_id"] for d in listed.json()] == ["panel-a"]
    assert [r["school_id"] for r in city.ctl("status", "--json", token=it1).json()["counts"]] == [
        "s1"
    ]
    assert city.ctl("devices", "show", "panel-a", token=it1).code == 0

    # Another school's things are refused outright, never an empty answer; its
    # devices are not even said to exist.
    _hidden(city.ctl("devices", "show", "panel-b", token=it1), "panel-b")
    _denied(city.ctl("devices", "list", "--school", "s2", token=it1), "school s2")
    _denied(city.ctl("status", "--school", "s2", token=it1), "school s2")
    _hidden(city.ctl("devices", "decommission", "panel-b", "--yes", token=it1), "panel-b")
    _hidden(city.ctl("devices", "ping", "panel-b", token=it1), "panel-b")
    _denied(city.ctl("enroll", "token", "create", "--school", "s2", token=it1), "school s2")
    _denied(city.ctl("users", "list", token=it1), "only central-ops")
    # The other school's device is untouched.
    shown = city.ctl("devices", "show", "panel-b", "--json").json()
    assert shown["status"] == "online" and shown["enrollment"]["decommissioned_at"] is None

    # In their own school they act.
    made = city.ctl("enroll", "token", "create", "--school", "s1", "--json", token=it1)
    assert made.code == 0, made.err
    ping = city.ctl("devices", "ping", "panel-a", "--json", token=it1)
    assert ping.code == 0 and ping.json()["status"] == "ok", ping

    # Every denial above is in the audit log, with who, what and which school.
    denied = city.ctl("audit", "--actor", "it1", "--outcome", "denied", "--json").json()
    got = {(e["action"], e["target"] or e["school_id"]) for e in denied}
    assert got == {
        ("devices.show", "panel-b"),
        ("devices.list", "s2"),
        ("status", "s2"),
        ("devices.decommission", "panel-b"),
        ("devices.ping", "panel-b"),
        ("enroll-tokens.create", "s2"),
        ("users.list", ""),
    }
    assert all(e["peer"].startswith("ipv4:127.0.0.1") for e in denied)
    done = city.ctl("audit", "--actor", "it1", "--outcome", "ok", "--json").json()
    assert {e["action"] for e in done} == {"enroll-tokens.create", "devices.ping"}
    assert {e["school_id"] for e in done} == {"s1"}


def test_a_viewer_reads_everything_and_changes_nothing(city: City) -> None:
    assert city.ctl("devices", "show", "panel-b", token=city.viewer).code == 0
    assert len(city.ctl("devices", "list", "--json", token=city.viewer).json()) == 2
    _denied(
        city.ctl("devices", "decommission", "panel-a", "--yes", token=city.viewer),
        "user view (viewer)",
        "only reads",
    )
    _denied(city.ctl("enroll", "token", "revoke", "abcdefgh", token=city.viewer), "only reads")
    entries = city.ctl("audit", "--actor", "view", "--json").json()
    assert [(e["action"], e["outcome"]) for e in entries] == [
        ("enroll-tokens.revoke", "denied"),
        ("devices.decommission", "denied"),
    ]


def test_no_token_a_wrong_one_or_a_revoked_one_is_refused_and_audited(city: City) -> None:
    def anonymous() -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = city.ctl("audit", "--actor", "-", "--json").json()
        return entries

    def denied_whoami() -> float:
        return city.c.metrics().get('schoolfleet_admin_denied_total{action="whoami"}', 0.0)

    before, whoami_before = len(anonymous()), denied_whoami()
    _denied(city.ctl("status", token=""), "not logged in: no token", "schoolctl", "login")
    _denied(city.ctl("status", token="sfu_" + "x" * 43), "not accepted")
    temp = city.ctl("users", "create", "temp", "--role", "viewer").out.strip()
    assert city.ctl("whoami", token=temp).out.startswith("temp (viewer; all schools)")
    assert city.ctl("users", "revoke", "temp").code == 0
    _denied(city.ctl("whoami", token=temp), "not accepted")

    after = anonymous()
    new = after[: len(after) - before]
    assert [(e["action"], e["outcome"]) for e in new] == [
        ("whoami", "denied"),
        ("status", "denied"),
        ("status", "denied"),
    ]
    assert "no bearer token" in new[2]["message"] and "not accepted" in new[1]["message"]
    assert denied_whoami() == whoami_before + 1
    users = {u["name"]: bool(u["revoked_at"]) for u in city.ctl("users", "list", "--json").json()}
    assert users["temp"] is True and users["it1"] is False and users["ops"] is False


def test_a_scoped_reader_sees_only_their_schools_in_the_audit_log(city: City) -> None:
    city.ctl("enroll", "token", "create", "--school", "s2")  # by ops, in s2
    seen = city.ctl("audit", "--json", "--limit", "1000", token=city.it1).json()
    assert seen, "it1 sees their own entries"
    assert all(e["school_id"] == "s1" or e["actor"] == "it1" for e in seen)
    assert not any(e["actor"] == "ops" and e["school_id"] == "s2" for e in seen)
    _denied(city.ctl("audit", "--school", "s2", token=city.it1), "school s2")


def test_users_are_made_by_central_ops_with_clear_refusals(city: City) -> None:
    made = city.ctl("users", "create", "it2", "--role", "school-it", "--school", "s2", "--json")
    assert made.code == 0 and made.json()["token"].startswith("sfu_")
    assert made.json()["schools"] == ["s2"]
    for args, words in (
        (("users", "create", "it3", "--role", "school-it"), "needs at least one school"),
        (("users", "create", "x y", "--role", "viewer"), "user name 'x y' is not valid"),
        (("users", "create", "it2", "--role", "viewer"), "user 'it2' exists"),
        (("users", "create", "o2", "--role", "central-ops", "--school", "s1"), "every school"),
        (("users", "create", "o3", "--role", "viewer", "--expires", "3x"), "--expires"),
        (("users", "revoke", "nobody"), "no user 'nobody'"),
    ):
        refused = city.ctl(*args)
        assert refused.code in (2, 4), refused
        assert words in refused.err and "Traceback" not in refused.err, refused.err
    failed = city.ctl("audit", "--action", "users.create", "--outcome", "failed", "--json")
    assert {e["target"] for e in failed.json()} >= {"it3", "x y", "it2", "o2"}


def test_login_keeps_the_token_for_its_owner_only(city: City, tmp_path: Path) -> None:
    config = tmp_path / "conf" / "schoolctl.toml"
    env = {"SCHOOLCTL_CONFIG": str(config)}
    bad = city.ctl("login", token="", env=env, stdin="sfu_nottherightone\n")
    _denied(bad, "did not accept your token")
    assert not config.exists()

    good = city.ctl("login", token="", env=env, stdin=city.it1 + "\n")
    assert good.code == 0, good.err
    assert good.out.startswith("logged in to 127.0.0.1:") and "as it1 (school-it; s1)" in good.out
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert city.it1 in config.read_text() and "ca.crt" in config.read_text()

    # From now on the file says where, with what CA, and who: no flags needed.
    own = _ctl_from_config(env)
    assert own.code == 0 and own.out.startswith("it1 (school-it; s1)"), own

    os.chmod(config, 0o644)
    loose = _ctl_from_config(env)
    assert loose.code == 1 and loose.err.count("\n") == 1
    assert "mode 0644 lets others read your token; run: chmod 600" in loose.err

    os.chmod(config, 0o600)
    assert city.ctl("logout", token="", env=env).code == 0
    assert "token" not in config.read_text()


def _ctl_from_config(env: dict[str, str]) -> Result:
    import subprocess
    import sys

    done = subprocess.run(
        [str(Path(sys.executable).parent / "schoolctl"), "whoami"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "SCHOOLCTL_TOKEN": "", **env},
    )
    return Result(done.returncode, done.stdout, done.stderr)
