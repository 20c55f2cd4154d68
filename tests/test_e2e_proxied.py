"""Behind a load balancer, each client is known by its own address.

Two schools' networks are namespaces the test makes; Debian's HAProxy listens on the
machine's end of each and passes their connections to one controller from 127.0.0.2
with a PROXY protocol v2 header (send-proxy-v2), which the controller's `proxy_from`
trusts. Without the header every call would come from the balancer: one school's wrong
enrollment tokens would spend the city's refusal budget and every device's enrollment
after would be refused, and a device naming no management address would be recorded
at the balancer's, where Ansible would then log in.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.haproxy import HaProxy
from tests.hostile_fleet import seed_token
from tests.netns import Link, linked_namespace, needs_root
from tests.procs import Agent, Controller, init_controller_ca, schoolctl, wait_until

pytestmark = [pytest.mark.e2e, needs_root]

ROOT = Path(__file__).resolve().parent.parent
BALANCER_SOURCE = "127.0.0.2"
BURST = 5
REFUSED = (
    "PERMISSION_DENIED the enrollment token is not valid (unknown, used up, expired or revoked)"
)

# Enrollments from inside a namespace: [code, details] for each.
_ENROLL = """
import json, sys
import grpc
from protos.schoolfleet.v1 import agent_pb2
from tests.hostile_pki import csr_pem
from tests.hostile_wire import CLIENT_OPTIONS, ENROLL, unary
address, token, count, prefix = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
answers = []
with grpc.insecure_channel(address, options=CLIENT_OPTIONS) as channel:
    for n in range(count):
        request = agent_pb2.EnrollRequest(
            token=token, device_id=f"{prefix}{n}", csr_pem=csr_pem()
        )
        code, details, _ = unary(channel, ENROLL, request.SerializeToString())
        answers.append([code.name, details])
print(json.dumps(answers))
"""


def _enroll_from(link: Link, address: str, token: str, count: int, prefix: str) -> list[str]:
    argv = ["ip", "netns", "exec", link.namespace, sys.executable, "-c", _ENROLL]
    done = subprocess.run(
        [*argv, address, token, str(count), prefix],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    return [f"{code} {details}".strip() for code, details in json.loads(done.stdout)]


def test_each_schools_address_is_seen_through_haproxy(tmp_path: Path) -> None:
    with ExitStack() as stack:
        school_a = stack.enter_context(linked_namespace())
        school_b = stack.enter_context(linked_namespace())
        init_controller_ca(tmp_path / "data")
        c = Controller(
            tmp_path,
            env={
                "SCHOOLFLEET_CONTROLLER_DATA_DIR": str(tmp_path / "data"),
                "SCHOOLFLEET_CONTROLLER_PROXY_FROM": json.dumps([BALANCER_SOURCE]),
                "SCHOOLFLEET_CONTROLLER_REFUSED_BURST": str(BURST),
                "SCHOOLFLEET_CONTROLLER_REFUSED_PER_MINUTE": "1",
            },
        ).start()
        stack.callback(c.stop)
        lb = HaProxy(
            tmp_path,
            [("127.0.0.1", c.grpc_port)],
            binds=(school_a.machine, school_b.machine),
            proxy_source=BALANCER_SOURCE,
        ).start()
        stack.callback(lb.stop)

        # A panel in school A's network names no management address: it is recorded
        # at its own, not the balancer's.
        panel = Agent(
            tmp_path,
            "panel-a1",
            "panel",
            "sch-a",
            "r1",
            f"{school_a.machine}:{lb.port}",
            netns=school_a.namespace,
        ).start()
        stack.callback(panel.stop)

        def shown() -> dict[str, object] | None:
            done = schoolctl(c.address, "devices", "show", "panel-a1", "--json")
            return done.json() if done.code == 0 else None

        device = wait_until(shown, 20, "panel-a1 known")
        assert device["address"] == school_a.device, device

        # School A sends wrong enrollment tokens: its budget is spent, not the city's.
        flood = _enroll_from(school_a, f"{school_a.machine}:{lb.port}", "sfe_" + "x" * 44, 8, "p")
        assert flood[:BURST] == [REFUSED] * BURST, flood
        assert all(
            answer.startswith(
                f"RESOURCE_EXHAUSTED too many refused attempts from {school_a.device}: "
            )
            for answer in flood[BURST:]
        ), flood
        good = seed_token(c.database, "sch-b")
        assert _enroll_from(school_b, f"{school_b.machine}:{lb.port}", good, 1, "panel-b") == ["OK"]
        wrong = _enroll_from(school_b, f"{school_b.machine}:{lb.port}", "sfe_" + "y" * 44, 1, "q")
        assert wrong == [REFUSED], wrong

        # The audit log names each school's address; schoolctl here reaches the
        # controller's own port directly, and is known by its own address too.
        audit = schoolctl(c.address, "audit", "--action", "enroll", "--json")
        assert audit.code == 0, audit
        # "ipv4:ADDRESS:PORT", or the address alone in the entry that counts a flood.
        peers = [re.sub(r"^ipv4:|:[0-9]+$", "", entry["peer"]) for entry in audit.json()]
        assert sorted(set(peers)) == sorted({school_a.device, school_b.device}), peers
        assert peers.count(school_b.device) == 2, audit.json()
        assert BALANCER_SOURCE not in c.log_text()

        # From the balancer's own address: a connection that is not a PROXY header, one
        # closed inside its header, and one that sends nothing (a plain connect check,
        # not a refusal). Counted exactly; HAProxy's health checks (LOCAL) are not.
        for sent in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\r\n\r\n\x00", b""):
            with socket.create_connection(
                ("127.0.0.1", c.grpc_port), timeout=5, source_address=(BALANCER_SOURCE, 0)
            ) as raw:
                if sent:
                    raw.sendall(sent)
                    raw.shutdown(socket.SHUT_WR)
                    assert raw.recv(100) == b"", "closed, nothing answered"

        def refused() -> dict[str, float] | None:
            samples = c.metrics()
            counts = {
                reason: samples[f'schoolfleet_front_refused_total{{reason="{reason}"}}']
                for reason in ("timeout", "bad-header", "cut-header", "not-ip")
            }
            return counts if sum(counts.values()) >= 2 else None

        counted = wait_until(refused, 10, "the refusals counted")
        time.sleep(0.5)
        assert (
            counted
            == refused()
            == {
                "timeout": 0,
                "bad-header": 1,
                "cut-header": 1,
                "not-ip": 0,
            }
        )
