"""Infrastructure: the AdminService calls behind `schoolctl inventory/aps/servers` (the
inventory import, access points, unknown BSSIDs and servers, trusting a server's host key)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from cli.client.connection import Connection
from cli.client.parts import send_in_parts
from cli.client.values import ImportAnswer, InfraTarget, KeyFingerprint, Probe, UnknownBssids
from inventory.infra import AccessPoint, UnknownBssid
from inventory.infra_rows import InventoryRow
from protos.schoolfleet.v1 import admin_pb2
from wire.infra import item_to_pb
from wire.mapping import seconds


def _key(key: admin_pb2.HostKeyInfo) -> KeyFingerprint:
    return KeyFingerprint(key.key_type, key.fingerprint)


def _target_from_pb(t: admin_pb2.InfraTarget) -> InfraTarget:
    p = t.latest
    a = t.access_point
    return InfraTarget(
        target_id=t.target_id,
        school_id=t.school_id,
        address=t.address,
        ssh_user=t.ssh_user,
        ssh_port=t.ssh_port,
        latest=Probe(p.up, p.reason, p.duration_seconds, seconds(p.probed_at), dict(p.facts))
        if t.HasField("latest")
        else None,
        pinned_key=_key(t.pinned_key) if t.HasField("pinned_key") else None,
        seen_key=_key(t.seen_key) if t.HasField("seen_key") else None,
        access_point=AccessPoint(
            ap_id=a.ap_id,
            school_id=a.school_id,
            address=a.address,
            room_id=a.room_id,
            location=a.location,
            model=a.model,
            mac=a.mac,
            bssids=tuple(a.bssids),
            ssh_user=a.ssh_user,
            ssh_port=a.ssh_port,
        ),
        devices=t.devices,
        median_signal_dbm=t.median_signal_dbm if t.HasField("median_signal_dbm") else None,
        last_seen_by_device=seconds(t.last_seen_by_device)
        if t.HasField("last_seen_by_device")
        else None,
    )


def _unknown_from_pb(u: admin_pb2.UnknownBssid) -> UnknownBssid:
    return UnknownBssid(
        school_id=u.school_id,
        bssid=u.bssid,
        devices=u.devices,
        median_signal_dbm=u.median_signal_dbm if u.HasField("median_signal_dbm") else None,
        last_seen=seconds(u.last_seen),
    )


class InfraClient:
    """Access points, servers and the inventory, as our own values."""

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
    ) -> Iterator[InfraTarget]:
        """Every access point matching the filters, fetched page by page."""
        request = admin_pb2.ListAccessPointsRequest(
            school_id=school_id or "", down_only=down_only, page_size=page_size
        )
        while True:
            response = self._conn.call(self._conn.stub.ListAccessPoints, request)
            yield from (_target_from_pb(t) for t in response.access_points)
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    def unknown_bssids(self, school_id: str | None) -> UnknownBssids:
        """BSSIDs devices name that no access point has, of one school or every school
        the caller may see (``more``: those left out of a long answer)."""
        request = admin_pb2.ListUnknownBssidsRequest(school_id=school_id or "")
        response = self._conn.call(self._conn.stub.ListUnknownBssids, request)
        return UnknownBssids([_unknown_from_pb(u) for u in response.bssids], response.more)

    def servers(self, school_id: str | None, down_only: bool) -> list[InfraTarget]:
        """Servers of one school, or of every school the caller may see."""
        request = admin_pb2.ListServersRequest(school_id=school_id or "", down_only=down_only)
        response = self._conn.call(self._conn.stub.ListServers, request)
        return [_target_from_pb(t) for t in response.servers]

    def server(self, server_id: str) -> InfraTarget:
        """One server; NotFound if the inventory has none by that id."""
        request = admin_pb2.GetServerRequest(server_id=server_id)
        return _target_from_pb(self._conn.call(self._conn.stub.GetServer, request))

    def trust_server_key(self, server_id: str, fingerprint: str) -> InfraTarget:
        """Pins the key the server presents, if it is still the one with ``fingerprint``."""
        request = admin_pb2.TrustServerKeyRequest(server_id=server_id, fingerprint=fingerprint)
        return _target_from_pb(self._conn.call(self._conn.stub.TrustServerKey, request))
