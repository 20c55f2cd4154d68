"""The controller's probes end to end: an inventory imported through schoolctl names
real sshd hosts in namespaces; the controller probes them, a server's key is trusted
and its facts appear, and a key that changed is refused."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pytest

from inventory.infra import HostKey
from tests.netns import needs_root
from tests.procs import Controller, schoolctl, wait_until
from tests.ssh_hosts import SshHost, ssh_hosts

pytestmark = [pytest.mark.e2e, needs_root]

HEADER = "type,id,school,room,name,location,model,mac,bssids,address,ssh_user,ssh_port\n"


def _inventory(srv1: str, srv2: str, ap: str) -> str:
    return HEADER + (
        "school,s1,,,School 1,,,,,,,\n"
        f"server,srv-1,s1,,,,,,,{srv1},root,22\n"
        f"server,srv-2,s1,,,,,,,{srv2},root,22\n"
        # TCP only: one answering, one on a port nothing listens on.
        f"ap,ap-1,s1,,,hall,,,,{ap},,22\n"
        f"ap,ap-2,s1,,,gym,,,,{ap},,2222\n"
    )


def _fingerprint(host: SshHost) -> str:
    kind, data = host.host_key.split()[:2]
    return HostKey(kind, data).fingerprint()


def _show(c: Controller, server_id: str) -> Any:
    done = schoolctl(c.address, "servers", "show", server_id, "--json")
    assert done.code == 0, done
    return done.json()


def test_the_controller_probes_servers_and_refuses_a_changed_key(tmp_path: Path) -> None:
    with ssh_hosts(2) as (one, two):
        c = Controller(
            tmp_path,
            env={
                "SCHOOLFLEET_CONTROLLER_PROBE_INTERVAL": "1",
                "SCHOOLFLEET_CONTROLLER_PROBE_BANNER_TIMEOUT": "2",
                "SCHOOLFLEET_CONTROLLER_ROLLOUT_SSH_KEY": str(one.key_file),
            },
        )
        try:
            c.start()
            inventory = tmp_path / "inventory.csv"
            inventory.write_text(_inventory(one.address, two.address, one.address))
            done = schoolctl(c.address, "inventory", "import", str(inventory))
            assert done.code == 0, done

            # First the keys are seen, not trusted: no login yet.
            def seen(server_id: str) -> Any:
                shown = _show(c, server_id)
                return shown if shown["seen_key"] else None

            for server_id, host in (("srv-1", one), ("srv-2", two)):
                shown = wait_until(partial(seen, server_id), 15, f"{server_id} probed")
                assert shown["seen_key"]["fingerprint"] == _fingerprint(host)
                assert shown["state"] == "up"
                assert shown["reason"].startswith("host key not trusted yet: "), shown
                assert shown["facts"] == {}
                trusted = schoolctl(c.address, "servers", "trust", server_id, "--yes")
                assert trusted.code == 0, trusted

            def facts() -> Any:
                shown = _show(c, "srv-1")
                return shown if shown["facts"] else None

            shown = wait_until(facts, 15, "srv-1's facts")
            assert (shown["state"], shown["reason"]) == ("up", "")
            assert shown["facts"]["uptime_seconds"] > 0
            assert 0 < shown["facts"]["memory_percent"] <= 100

            # srv-2 moves to host one's address: the key pinned for it is not the one
            # presented there.
            inventory.write_text(_inventory(one.address, one.address, one.address))
            assert schoolctl(c.address, "inventory", "import", str(inventory)).code == 0

            def changed() -> Any:
                shown = _show(c, "srv-2")
                return shown if shown["reason"].startswith("host key changed") else None

            shown = wait_until(changed, 15, "srv-2's changed key refused")
            assert shown["facts"] == {}
            assert shown["pinned_key"]["fingerprint"] == _fingerprint(two)
            assert shown["seen_key"]["fingerprint"] == _fingerprint(one)

            aps = schoolctl(c.address, "aps", "list", "--json")
            assert aps.code == 0, aps
            states = {a["ap_id"]: (a["state"], a["reason"]) for a in aps.json()}
            assert states == {"ap-1": ("up", ""), "ap-2": ("down", "connection refused")}
            metrics = c.metrics()
            assert metrics['schoolfleet_probe_duration_seconds_count{check="ssh",kind="server"}']
            assert metrics['schoolfleet_probe_duration_seconds_count{check="tcp",kind="ap"}']
        finally:
            assert c.stop() == 0
        # Probes were running when it stopped; it stopped anyway, and cleanly.
        assert "Traceback" not in c.log.read_text()
