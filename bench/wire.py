"""The messages a simulated device sends, encoded once up front.

The generator must not be the bottleneck on a 2-core machine that also runs the
server under test, so a heartbeat is not built and serialized per message: the
Heartbeat body is serialized once and each message is that body behind its own
``seq`` field. Protobuf parsers accept fields in any order, so the bytes decode to
exactly the AgentMessage an agent would send (:func:`check_encoding` proves it).
"""

from __future__ import annotations

import time

from protos.schoolfleet.v1 import agent_pb2, fleet_pb2

# The device stream's method path, served by the controller and by the bare server.
CONNECT_METHOD = "/schoolfleet.v1.AgentService/Connect"
# Field 1 (seq), wire type 0 (varint).
_SEQ_TAG = b"\x08"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def hello(device_id: str, school_id: str, room_id: str) -> bytes:
    """The first message on a stream, as an agent sends it."""
    return agent_pb2.AgentMessage(
        seq=0,
        hello=agent_pb2.Hello(
            device_id=device_id,
            kind=fleet_pb2.DEVICE_KIND_PANEL,
            school_id=school_id,
            room_id=room_id,
            hostname=device_id,
            agent_version="bench",
            capabilities=["ping"],
        ),
    ).SerializeToString()


# At the production interval (30 s) and full_report_interval (300 s), one heartbeat
# in ten carries the full reports.
FULL_EVERY = 10


def heartbeat_body(now: float | None = None, *, full: bool = True) -> bytes:
    """An AgentMessage with a plausible panel Heartbeat and no seq: health and the
    verdict, and with ``full`` two filesystems, a sensor, wired and Wi-Fi interfaces
    (every figure in range)."""
    collected = now if now is not None else time.time()
    health = fleet_pb2.Health(
        cpu_percent=12.5,
        memory_percent=41.0,
        disk_percent=63.2,
        uptime_seconds=86_400.0,
        load1=0.4,
        load5=0.3,
        load15=0.2,
    )
    health.collected_at.FromNanoseconds(int(collected * 1e9))
    system = fleet_pb2.SystemReport(
        swap_percent=3.0,
        filesystems=[
            fleet_pb2.Filesystem(
                mountpoint="/", fstype="ext4", total_bytes=118 * 2**30, used_percent=63.2
            ),
            fleet_pb2.Filesystem(
                mountpoint="/boot/efi", fstype="vfat", total_bytes=511 * 2**20, used_percent=1.2
            ),
        ],
        temperatures=[fleet_pb2.Temperature(chip="coretemp", celsius=54.0)],
        agent_rss_bytes=52 * 2**20,
        agent_cpu_percent=0.1,
        kiosk_running=True,
    )
    network = fleet_pb2.NetworkReport(
        interfaces=[
            fleet_pb2.Interface(
                name="lo",
                state="unknown",
                mac="00:00:00:00:00:00",
                mtu=65536,
                addresses=["127.0.0.1/8", "::1/128"],
                rx_bytes=9_000_000,
                tx_bytes=9_000_000,
            ),
            fleet_pb2.Interface(
                name="enp2s0",
                state="up",
                mac="3c:7c:3f:1a:2b:3c",
                mtu=1500,
                addresses=["10.41.7.23/24", "fe80::3e7c:3fff:fe1a:2b3c/64"],
                speed_mbit=1000,
                rx_bytes=48_000_000_000,
                tx_bytes=2_100_000_000,
                rx_errors=3,
            ),
            fleet_pb2.Interface(
                name="wlp3s0",
                state="up",
                mac="f4:8c:50:11:22:33",
                mtu=1500,
                addresses=["10.42.7.23/22"],
                rx_bytes=800_000_000,
                tx_bytes=90_000_000,
                wireless=True,
            ),
        ],
        default_gateway="10.41.7.1",
        default_interface="enp2s0",
        wifi=[
            fleet_pb2.Wifi(
                interface="wlp3s0",
                bssid="a0:b1:c2:d3:e4:f5",
                ssid="school-1234-staff",
                frequency_mhz=5180,
                signal_dbm=-58.0,
            )
        ],
        wifi_status="associated",
    )
    beat = agent_pb2.Heartbeat(
        health=health, condition=fleet_pb2.CONDITION_OK, spool=fleet_pb2.SpoolStats()
    )
    if full:
        beat.system.CopyFrom(system)
        beat.network.CopyFrom(network)
    return agent_pb2.AgentMessage(heartbeat=beat).SerializeToString()


def heartbeat(seq: int, body: bytes) -> bytes:
    """The heartbeat with sequence number ``seq`` (above 0)."""
    return _SEQ_TAG + _varint(seq) + body


def check_encoding(body: bytes) -> None:
    """Raises AssertionError unless :func:`heartbeat` bytes decode as intended."""
    for seq in (1, 127, 128, 300, 2**40):
        message = agent_pb2.AgentMessage.FromString(heartbeat(seq, body))
        if message.seq != seq or message.WhichOneof("body") != "heartbeat":
            raise AssertionError(f"heartbeat encoding is wrong for seq={seq}")


def welcome(last_stored_seq: int = 0, interval: int = 30) -> bytes:
    """A Welcome as the controller sends it (the bare server answers with this)."""
    return agent_pb2.ControllerMessage(
        welcome=agent_pb2.Welcome(
            heartbeat_interval_seconds=interval,
            offline_after_seconds=3 * interval,
            last_stored_seq=last_stored_seq,
        )
    ).SerializeToString()


def read_welcome(raw: bytes) -> int | None:
    """The ``last_stored_seq`` of a Welcome, or None if ``raw`` is not a Welcome."""
    message = agent_pb2.ControllerMessage.FromString(raw)
    if message.WhichOneof("body") != "welcome":
        return None
    return message.welcome.last_stored_seq


def read_ack(raw: bytes) -> int | None:
    """The seq an Ack covers, or None for any other controller message."""
    message = agent_pb2.ControllerMessage.FromString(raw)
    if message.WhichOneof("body") != "ack":
        return None
    return message.ack.seq
