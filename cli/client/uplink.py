"""Schools' uplinks: the AdminService calls behind `schoolctl uplink`."""

from __future__ import annotations

from typing import cast

import grpc

from cli.client.connection import Connection
from cli.client.values import SchoolUplink
from cli.errors import DeviceUnavailable
from inventory.uplink import UplinkCheck
from protos.schoolfleet.v1 import admin_pb2
from wire.uplink import check_from_pb


class UplinkClient:
    """Schools' uplink checks, as our own values."""

    def __init__(self, connection: Connection) -> None:
        self._conn = connection

    def check(self, school_id: str, wait: float) -> UplinkCheck:
        """Checks the school's uplink now and waits up to ``wait`` seconds for the end."""
        request = admin_pb2.CheckUplinkRequest(school_id=school_id)
        try:
            answer = self._conn.stub.CheckUplink(
                request, timeout=wait, metadata=self._conn.metadata
            )
        except grpc.RpcError as exc:
            if cast(grpc.Call, exc).code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise DeviceUnavailable(
                    f"the check of school {school_id} did not end within {wait:g}s; "
                    "its result will show in 'schoolctl uplink list'"
                ) from None
            raise self._conn.error(exc) from None
        return check_from_pb(answer)

    def schools(self, school_id: str | None) -> list[SchoolUplink]:
        """Each school's latest check and measurement, of one school or all."""
        request = admin_pb2.ListUplinksRequest(school_id=school_id or "")
        return [
            SchoolUplink(
                s.school_id,
                check_from_pb(s.latest),
                check_from_pb(s.measured) if s.HasField("measured") else None,
            )
            for s in self._conn.call(self._conn.stub.ListUplinks, request).schools
        ]
