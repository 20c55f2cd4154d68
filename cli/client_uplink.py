"""AdminService's uplink calls, for AdminClient (cli/client.py): a mixin, like
cli/client_rollouts.py; the stub and the gRPC-to-CliError mapping are AdminClient's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import grpc

from cli.errors import DeviceUnavailable
from inventory.uplink import UplinkCheck
from protos.schoolfleet.v1 import admin_pb2
from wire.uplink import check_from_pb

if TYPE_CHECKING:
    from cli.client import Req, Resp
    from cli.errors import CliError
    from protos.schoolfleet.v1 import admin_pb2_grpc


@dataclass(frozen=True, slots=True)
class SchoolUplink:
    """A school's latest check, and its latest measurement (None if it has none)."""

    school_id: str
    latest: UplinkCheck
    measured: UplinkCheck | None


class UplinkCalls:
    """Schools' uplink checks, as our own values."""

    _stub: admin_pb2_grpc.AdminServiceStub
    _metadata: tuple[tuple[str, str], ...]

    if TYPE_CHECKING:

        def _call(self, rpc: grpc.UnaryUnaryMultiCallable[Req, Resp], request: Req) -> Resp: ...

        def _error(self, exc: grpc.RpcError) -> CliError: ...

    def check_uplink(self, school_id: str, wait: float) -> UplinkCheck:
        """Checks the school's uplink now and waits up to ``wait`` seconds for the end."""
        request = admin_pb2.CheckUplinkRequest(school_id=school_id)
        try:
            answer = self._stub.CheckUplink(request, timeout=wait, metadata=self._metadata)
        except grpc.RpcError as exc:
            if cast(grpc.Call, exc).code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise DeviceUnavailable(
                    f"the check of school {school_id} did not end within {wait:g}s; "
                    "its result will show in 'schoolctl uplink list'"
                ) from None
            raise self._error(exc) from None
        return check_from_pb(answer)

    def uplinks(self, school_id: str | None) -> list[SchoolUplink]:
        """Each school's latest check and measurement, of one school or all."""
        request = admin_pb2.ListUplinksRequest(school_id=school_id or "")
        return [
            SchoolUplink(
                s.school_id,
                check_from_pb(s.latest),
                check_from_pb(s.measured) if s.HasField("measured") else None,
            )
            for s in self._call(self._stub.ListUplinks, request).schools
        ]
