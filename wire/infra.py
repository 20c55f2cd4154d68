"""The infrastructure inventory and probe results between our values and the admin
API's messages: rows schoolctl sends, targets the controller answers with."""

from __future__ import annotations

from inventory.infra import AccessPoint, HostKey, Room, School, TargetStatus, UnknownBssid
from inventory.infra_rows import InventoryRow, ItemKind
from protos.schoolfleet.v1 import admin_pb2
from wire.mapping import timestamp


def _ap_to_pb(ap: AccessPoint) -> admin_pb2.InventoryAccessPoint:
    return admin_pb2.InventoryAccessPoint(
        ap_id=ap.ap_id,
        school_id=ap.school_id,
        room_id=ap.room_id,
        location=ap.location,
        model=ap.model,
        mac=ap.mac,
        bssids=ap.bssids,
        address=ap.address,
        ssh_user=ap.ssh_user,
        ssh_port=ap.ssh_port,
    )


def item_to_pb(row: InventoryRow) -> admin_pb2.InventoryItem:
    """A checked row, to send."""
    item = row.item
    if isinstance(item, School):
        school = admin_pb2.InventorySchool(school_id=item.school_id, name=item.name)
        return admin_pb2.InventoryItem(line=row.line, school=school)
    if isinstance(item, Room):
        room = admin_pb2.InventoryRoom(school_id=item.school_id, room_id=item.room_id)
        return admin_pb2.InventoryItem(line=row.line, room=room)
    if isinstance(item, AccessPoint):
        return admin_pb2.InventoryItem(line=row.line, access_point=_ap_to_pb(item))
    server = admin_pb2.InventoryServer(
        server_id=item.server_id,
        school_id=item.school_id,
        address=item.address,
        ssh_user=item.ssh_user,
        ssh_port=item.ssh_port,
    )
    return admin_pb2.InventoryItem(line=row.line, server=server)


def item_fields(item: admin_pb2.InventoryItem) -> tuple[str, dict[str, object]]:
    """A received row as a file gives it (its type and fields), for the controller to
    check again with ``inventory.infra_rows.parse_item``; "" for a row of no kind."""
    which = item.WhichOneof("item")
    if which == "school":
        return ItemKind.SCHOOL, {"id": item.school.school_id, "name": item.school.name}
    if which == "room":
        return ItemKind.ROOM, {"id": item.room.room_id, "school": item.room.school_id}
    if which == "access_point":
        a = item.access_point
        return ItemKind.AP, {
            "id": a.ap_id, "school": a.school_id, "room": a.room_id, "location": a.location,
            "model": a.model, "mac": a.mac, "bssids": list(a.bssids), "address": a.address,
            "ssh_user": a.ssh_user, "ssh_port": str(a.ssh_port or ""),
        }  # fmt: skip
    if which == "server":
        s = item.server
        return ItemKind.SERVER, {
            "id": s.server_id, "school": s.school_id, "address": s.address,
            "ssh_user": s.ssh_user, "ssh_port": str(s.ssh_port or ""),
        }  # fmt: skip
    return "", {}


def _key_to_pb(key: HostKey) -> admin_pb2.HostKeyInfo:
    return admin_pb2.HostKeyInfo(key_type=key.key_type, fingerprint=key.fingerprint())


def target_to_pb(status: TargetStatus) -> admin_pb2.InfraTarget:
    """An access point or server as the admin API shows it."""
    t = status.target
    out = admin_pb2.InfraTarget(
        target_id=t.target_id,
        school_id=t.school_id,
        address=t.address,
        ssh_user=t.ssh_user,
        ssh_port=t.ssh_port,
        devices=status.devices,
    )
    latest = status.latest
    if latest is not None:
        out.latest.CopyFrom(
            admin_pb2.ProbeInfo(
                up=latest.up,
                reason=latest.reason,
                duration_seconds=latest.duration,
                probed_at=timestamp(latest.probed_at),
                facts=dict(latest.facts),
            )
        )
        if latest.seen_key is not None:
            out.seen_key.CopyFrom(_key_to_pb(latest.seen_key))
    if t.pinned_key is not None:
        out.pinned_key.CopyFrom(_key_to_pb(t.pinned_key))
    if status.access_point is not None:
        out.access_point.CopyFrom(_ap_to_pb(status.access_point))
    if status.median_signal_dbm is not None:
        out.median_signal_dbm = status.median_signal_dbm
    if status.last_seen_by_device is not None:
        out.last_seen_by_device.CopyFrom(timestamp(status.last_seen_by_device))
    return out


def unknown_bssid_to_pb(u: UnknownBssid) -> admin_pb2.UnknownBssid:
    """A BSSID no access point has, as the admin API shows it."""
    out = admin_pb2.UnknownBssid(
        school_id=u.school_id, bssid=u.bssid, devices=u.devices, last_seen=timestamp(u.last_seen)
    )
    if u.median_signal_dbm is not None:
        out.median_signal_dbm = u.median_signal_dbm
    return out
