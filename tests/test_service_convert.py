"""What devices send is checked before it goes further."""

from __future__ import annotations

import contextlib
import math

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st

from controller.api.convert import health_from_pb, identity_from_hello
from controller.errors import ProtocolError
from inventory.model import DeviceKind
from protos.schoolfleet.v1 import agent_pb2, fleet_pb2


def test_hello_becomes_an_identity() -> None:
    hello = agent_pb2.Hello(
        device_id="panel-1", kind=fleet_pb2.DEVICE_KIND_PANEL, school_id="1234", room_id=""
    )
    identity = identity_from_hello(hello)
    assert identity.kind is DeviceKind.PANEL
    assert identity.room_id == ""


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"device_id": ""}, "Hello.device_id '' is not a valid id"),
        ({"device_id": "a/b"}, "Hello.device_id 'a/b'"),
        ({"kind": 0}, "Hello.kind 0 is not a known device kind"),
        ({"kind": 77}, "Hello.kind 77"),
        ({"school_id": "x" * 65}, "Hello.school_id"),
        ({"hostname": "h" * 256}, "Hello.hostname is longer than 255"),
    ],
)
def test_bad_hello_names_the_field(fields: dict[str, object], message: str) -> None:
    base: dict[str, object] = {
        "device_id": "p1",
        "kind": fleet_pb2.DEVICE_KIND_PANEL,
        "school_id": "s1",
    }
    with pytest.raises(ProtocolError, match=message):
        identity_from_hello(agent_pb2.Hello(**{**base, **fields}))  # type: ignore[arg-type]


@given(
    cpu=st.floats(allow_nan=True, allow_infinity=True, width=64),
    load=st.floats(allow_nan=True, allow_infinity=True, width=64),
)
def test_health_is_accepted_only_in_range(cpu: float, load: float) -> None:
    h = fleet_pb2.Health(cpu_percent=cpu, memory_percent=1, disk_percent=1, load1=load)
    ok = math.isfinite(cpu) and 0 <= cpu <= 100 and math.isfinite(load) and load >= 0
    if ok:
        assert health_from_pb(h).cpu_percent == cpu
    else:
        with pytest.raises(ProtocolError, match="out of range"):
            health_from_pb(h)


@given(st.binary(max_size=512))
def test_random_bytes_never_crash_the_decoder(data: bytes) -> None:
    # Either a message (whose checks then apply) or a DecodeError, never anything else.
    try:
        message = agent_pb2.AgentMessage.FromString(data)
    except DecodeError:
        return
    if message.WhichOneof("body") == "hello":
        with contextlib.suppress(ProtocolError):
            identity_from_hello(message.hello)
