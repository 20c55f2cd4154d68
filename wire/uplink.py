"""Uplink checks between our values and the admin API's messages, both directions."""

from __future__ import annotations

from inventory.uplink import UplinkCheck, UplinkState
from protos.schoolfleet.v1 import admin_pb2
from wire.mapping import seconds, timestamp


def check_to_pb(c: UplinkCheck) -> admin_pb2.UplinkCheck:
    return admin_pb2.UplinkCheck(
        school_id=c.school_id,
        started_at=timestamp(c.started_at),
        device_id=c.device_id,
        bytes=c.bytes,
        state=c.state.value,
        seconds=c.seconds or 0.0,
        mbps=c.mbps or 0.0,
        error=c.error,
    )


def check_from_pb(c: admin_pb2.UplinkCheck) -> UplinkCheck:
    measured = c.state == UplinkState.OK.value
    return UplinkCheck(
        school_id=c.school_id,
        started_at=seconds(c.started_at),
        device_id=c.device_id,
        bytes=c.bytes,
        seconds=c.seconds if measured else None,
        mbps=c.mbps if measured else None,
        # A failed check always says why; an empty reason from the wire still fails.
        error=(c.error or "failed") if c.state == UplinkState.FAILED.value else "",
    )
