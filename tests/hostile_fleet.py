"""The fleet that hostile-input tests attack, and what they check it against.

``start_fleet`` runs one controller with mutual TLS and one well-behaved device (a
real agent, enrolled with a token) that streams heartbeats throughout; the test
modules each run one for the whole module. ``assert_unharmed`` is what every test
ends with: the controller is still up, wrote no traceback, and the good device's
heartbeats are still being stored, with no gap in its sequence and its stream never
dropped. The store is read read-only, so that a test can never be what changes the
controller's data; only ``seed_token`` writes, as the admin API would.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
from google.protobuf.message import Message

from common.secret_hash import hash_secret
from controller.enroll import tokens as enrollment
from controller.enroll.pki import CertificateAuthority, load_ca
from controller.settings import ControllerSettings
from controller.stores import open_stores
from protos.schoolfleet.v1 import agent_pb2
from tests.hostile_pki import KeyCert, csr_pem, key_pem, new_key
from tests.hostile_wire import ENROLL, tls_channel, unary
from tests.procs import Agent, Controller, init_controller_ca, tls_env, wait_until
from tests.raw_stream import hello

GOOD, SCHOOL = "panel-good", "4321"
# A secret no token has.
NOBODYS = "sfe_unknown"
# The device the hostile streams claim to be: it has a real certificate of its own.
FUZZ = "panel-fuzz"
MAX = ControllerSettings().max_message_bytes

# --- the controller's store, read-only -------------------------------------------------


@dataclass(frozen=True)
class DeviceRow:
    """What the store holds of one device's stream of heartbeats."""

    heartbeats_stored: int
    last_seq: int
    seq_gaps: int


def _read(database: Path, sql: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
    # Read-only, so that a test can never be what changes the controller's data.
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        return db.execute(sql, params).fetchall()


def device_row(database: Path, device_id: str) -> DeviceRow | None:
    rows = _read(
        database,
        "SELECT heartbeats_stored, last_seq, seq_gaps FROM devices WHERE device_id = ?",
        (device_id,),
    )
    return DeviceRow(*(int(v) for v in rows[0])) if rows else None  # type: ignore[call-overload]


def enrolled(database: Path, device_ids: list[str]) -> set[str]:
    """Which of ``device_ids`` the controller issued a certificate to."""
    marks = ",".join("?" * len(device_ids))
    rows = _read(
        database,
        f"SELECT device_id FROM enrollments WHERE device_id IN ({marks})",
        tuple(device_ids),
    )
    return {str(r[0]) for r in rows}


def token_uses(database: Path, secret: str) -> tuple[int, int]:
    """``(uses, uses_left)`` of the token with ``secret``."""
    rows = _read(
        database,
        "SELECT uses, uses_left FROM enroll_tokens WHERE token_hash = ?",
        (hash_secret(secret),),
    )
    return int(rows[0][0]), int(rows[0][1])  # type: ignore[call-overload]


def enrolled_agent(
    c: Controller,
    device_id: str,
    school_id: str,
    pki_dir: Path,
    workdir: Path | None = None,
    **settings: object,
) -> Agent:
    """A real agent (a panel in room r1) that enrolls with a fresh token of its school
    over the enrollment port and then reports over mutual TLS; ``settings`` are more of
    its settings."""
    return Agent(
        workdir or c.workdir,
        device_id,
        "panel",
        school_id,
        "r1",
        c.address,
        extra={
            "enroll_token": seed_token(c.database, school_id),
            "ca_cert": str(pki_dir / "ca.crt"),
            "enroll_controller": f"127.0.0.1:{c.enroll_port}",
            **settings,
        },
    ).start()


def seed_token(
    database: Path,
    school_id: str,
    *,
    uses: int = 1,
    valid_seconds: int = 3600,
    now: float | None = None,
    revoked: bool = False,
) -> str:
    """Puts an enrollment token in the store as the admin API would; returns its secret."""
    minted_at = time.time() if now is None else now
    token, secret = enrollment.mint(school_id, uses, valid_seconds, minted_at)
    if revoked:
        token = replace(token, revoked_at=minted_at)
    store = open_stores(f"sqlite:{database}")
    try:
        store.enrollments.add_enroll_token(token, hash_secret(secret))
    finally:
        store.close()
    return secret


# --- the fleet ------------------------------------------------------------------------------


@dataclass
class Fleet:
    """The controller under attack and what the tests need to reach it."""

    controller: Controller
    agent: Agent
    ca: CertificateAuthority
    ca_pem: bytes
    # Server-side TLS only: enrollment and the admin API.
    enroll: grpc.Channel
    # Mutual TLS as FUZZ, the device the hostile streams come from.
    device: grpc.Channel
    # Where the current test's part of the controller's log starts.
    log_from: int = 0

    @property
    def database(self) -> Path:
        return self.controller.database

    def good(self) -> DeviceRow:
        row = device_row(self.database, GOOD)
        assert row is not None, "the good device is not in the store"
        return row

    def mutual(self, client: KeyCert | None) -> grpc.Channel:
        return tls_channel(self.controller.grpc_port, self.ca_pem, client)


@contextlib.contextmanager
def start_fleet(tmp: Path) -> Iterator[Fleet]:
    """A controller in ``tmp`` with the good device enrolled and reporting; stopped after."""
    data = tmp / "data"
    init_controller_ca(data)
    controller = Controller(tmp, env=tls_env(data))
    agent: Agent | None = None
    channels: list[grpc.Channel] = []
    try:
        controller.start()
        ca_pem = (data / "pki/ca.crt").read_bytes()
        agent = enrolled_agent(controller, GOOD, SCHOOL, data / "pki")
        ca = load_ca(data / "pki")
        enroll = tls_channel(controller.enroll_port, ca_pem)
        channels.append(enroll)
        # Enrolled like any device: only an enrolled device's certificate opens a stream.
        fuzz = enroll_as(enroll, seed_token(controller.database, SCHOOL), FUZZ)
        device = tls_channel(controller.grpc_port, ca_pem, fuzz)
        channels.append(device)
        fleet = Fleet(controller, agent, ca, ca_pem, enroll, device)
        wait_until(
            lambda: (
                (row := device_row(controller.database, GOOD)) is not None
                and row.heartbeats_stored >= 2
            ),
            30,
            "the good device enrolled and reporting",
        )
        yield fleet
    finally:
        for channel in channels:
            channel.close()
        if agent is not None:
            agent.stop()
        controller.stop()


def enroll_as(enroll: grpc.Channel, secret: str, device_id: str) -> KeyCert:
    """Enrolls ``device_id`` with the token ``secret`` through the real Enroll call: a
    key made here and the certificate the controller gave for it."""
    key = new_key()
    request = agent_pb2.EnrollRequest(token=secret, device_id=device_id, csr_pem=csr_pem(key))
    code, details, response = unary(enroll, ENROLL, request.SerializeToString())
    assert code == grpc.StatusCode.OK, f"{device_id} not enrolled: {code} {details}"
    return KeyCert(key_pem(key), agent_pb2.EnrollResponse.FromString(response).certificate_pem)


def assert_unharmed(fleet: Fleet) -> None:
    """The controller is up and clean, and the good device goes on, losing nothing."""
    c = fleet.controller
    assert c.proc is not None and c.proc.poll() is None, c.log_text()[-3000:]
    now = fleet.good()

    # Two more: stored after whatever the test did, in order, none missing.
    def grown() -> DeviceRow | None:
        row = fleet.good()
        return row if row.heartbeats_stored >= now.heartbeats_stored + 2 else None

    later = wait_until(grown, 15, "the good device's heartbeats still being stored")
    assert later.seq_gaps == 0
    # Every heartbeat it sent was stored once: its sequence starts at 1 and has no holes.
    assert later.last_seq == later.heartbeats_stored
    assert fleet.agent.proc is not None and fleet.agent.proc.poll() is None
    log = c.log_text()
    mine = log[fleet.log_from :]
    assert "Traceback" not in mine, mine[-3000:]
    assert " ERROR " not in mine, [line for line in mine.splitlines() if " ERROR " in line]
    # Its stream was never cut or replaced by anyone else's.
    assert log.count(f"stream open device={GOOD} ") == 1


# --- messages -----------------------------------------------------------------------------


def hello_from(device_id: str = FUZZ, **fields: object) -> agent_pb2.AgentMessage:
    """A Hello from ``device_id`` at SCHOOL, with ``fields`` of Hello set as given."""
    message = hello(device_id, SCHOOL)
    for name, value in fields.items():
        setattr(message.hello, name, value)
    return message


def serialized(*messages: Message | bytes) -> list[bytes]:
    """Each message serialized; bytes are sent as they are."""
    return [m if isinstance(m, bytes) else m.SerializeToString() for m in messages]
