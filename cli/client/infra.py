"""Infrastructure: the AdminService calls behind `schoolctl inventory/aps/servers` (the
inventory import, access points, unknown BSSIDs and servers, trusting a server's host key)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from cli.client.connection import Connection
from cli.client.parts import send_in_parts
from cli.client.values import ImportAnswer
from inventory.infra_rows import InventoryRow
from protos.schoolfleet.v1 import admin_pb2
from wire.infra import item_to_pb


class InfraClient:
    """Access points, servers and the inventory; answers are the controller's messages."""

    def __init__(self, connection: Connection) -> None:
        self._conn = connection

    def import_rows(
        self, source: str, groups: Sequence[Sequence[InventoryRow]], dry_run: bool
    ) -> ImportAnswer:
        """Sends inventory rows in parts, a group's rows in one part where they fit; what
        changed (added, updated, unchanged) and the refused rows."""

        def send(part: list[admin_pb2.InventoryItem]) -> admin_pb2.ImportInventoryResponse:
            request = admin_pb2.ImportInventoryRequest(source=source, items=part, dry_run=dry_run)
            return self._conn.call(self._conn.stub.ImportInventory, request)

        return send_in_parts(
            ([item_to_pb(r) for r in group] for group in groups),
            send,
            ("added", "updated", "unchanged"),
        )

    def access_points(
        self, school_id: str | None, down_only: bool, page_size: int = 1000
    ) -> Iterator[admin_pb2.InfraTarget]:
        """Every access point matching the filters, fetched page by page."""
        request = admin_pb2.ListAccessPointsRequest(
            school_id=school_id or "", down_only=down_only, page_size=page_size
        )
        while True:
            response = self._conn.call(self._conn.stub.ListAccessPoints, request)
            yield from response.access_points
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    def unknown_bssids(self, school_id: str | None) -> admin_pb2.ListUnknownBssidsResponse:
        """BSSIDs devices name that no access point has, of one school or every school
        the caller may see (``more``: those left out of a long answer)."""
        request = admin_pb2.ListUnknownBssidsRequest(school_id=school_id or "")
        return self._conn.call(self._conn.stub.ListUnknownBssids, request)

    def servers(self, school_id: str | None, down_only: bool) -> list[admin_pb2.InfraTarget]:
        """Servers of one school, or of every school the caller may see."""
        request = admin_pb2.ListServersRequest(school_id=school_id or "", down_only=down_only)
        return list(self._conn.call(self._conn.stub.ListServers, request).servers)

    def server(self, server_id: str) -> admin_pb2.InfraTarget:
        """One server; NotFound if the inventory has none by that id."""
        return self._conn.call(
            self._conn.stub.GetServer, admin_pb2.GetServerRequest(server_id=server_id)
        )

    def trust_server_key(self, server_id: str, fingerprint: str) -> admin_pb2.InfraTarget:
        """Pins the key the server presents, if it is still the one with ``fingerprint``."""
        request = admin_pb2.TrustServerKeyRequest(server_id=server_id, fingerprint=fingerprint)
        return self._conn.call(self._conn.stub.TrustServerKey, request)
