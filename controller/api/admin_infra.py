"""AdminService's infrastructure: import the inventory (schools, rooms, access points,
servers), list access points and servers with their probes, list the BSSIDs devices
name that no access point has, and pin a server's SSH host key."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import asdict

import grpc

from controller.api.guard import Call, Guard, Refused, guarded, invalid
from controller.api.imports import import_done
from controller.infra.store import InfraStore, InventoryCounts
from controller.lessons.store import LessonStore
from controller.people import access
from controller.people.access import Need
from inventory.infra import (
    AccessPoint,
    Room,
    School,
    Server,
    TargetKind,
    TargetStatus,
    UnknownBssid,
)
from inventory.infra_rows import (
    WORDS,
    InventoryRow,
    StoredInventory,
    check_inventory,
    item_id,
    kind_of,
    parse_item,
)
from inventory.model import valid_id
from inventory.people import Outcome
from inventory.row_fields import RowError
from protos.schoolfleet.v1 import admin_pb2
from wire.infra import item_fields, target_to_pb, unknown_bssid_to_pb

# Rows in one import: a city is ~80,000 (schools, rooms, access points, servers); sent
# in parts of at most 512 KiB by schoolctl.
IMPORT_MAX = 200_000
PAGE_DEFAULT, PAGE_MAX = 500, 1000
# Who holds a BSSID, to a caller who may not see the access point that does.
_ANOTHER = "of another school"
# Unknown BSSIDs in one answer (~60 bytes each): a longer city-wide list means a
# missing inventory, not a list to read; one school's is asked for then.
UNKNOWN_MAX = 5000


def _school_filter(school_id: str, call: Call) -> str | None:
    """A list's school filter ("": every school the caller may see), checked."""
    if school_id and not valid_id(school_id):
        raise invalid(f"school id {school_id[:80]!r} is not valid")
    call.target = school_id
    call.allow(Need.READ, school_id or None)
    return school_id or None


def _precondition(message: str) -> Refused:
    return Refused(grpc.StatusCode.FAILED_PRECONDITION, message, Outcome.FAILED)


class InfraAdmin:
    """The inventory's import, access points, servers and their probes, unknown BSSIDs,
    servers' host keys; rooms are the lessons' (an access point names one)."""

    def __init__(self, guard: Guard, infra: InfraStore, lessons: LessonStore) -> None:
        self.guard = guard
        self._infra = infra
        self._lessons = lessons

    async def _stored(
        self, rows: Sequence[InventoryRow], scope: frozenset[str] | None
    ) -> StoredInventory:
        """What check_inventory needs of the store for these rows; to a caller with
        ``scope``, another school's access point is not named."""
        aps = [r.item for r in rows if isinstance(r.item, AccessPoint)]
        schools = await self.guard.off_loop(
            self._infra.known_schools, {r.item.school_id for r in rows}
        )
        rooms = await self.guard.off_loop(
            self._lessons.known_rooms,
            {(ap.school_id, ap.room_id) for ap in aps if ap.room_id},
        )
        owners = await self.guard.off_loop(
            self._infra.bssid_owners, {b for ap in aps for b in ap.bssids}
        )
        if scope is not None and owners:
            homes = await self.guard.off_loop(
                self._infra.target_schools, TargetKind.AP, sorted(set(owners.values()))
            )
            owners = {b: ap if homes.get(ap) in scope else _ANOTHER for b, ap in owners.items()}
        return StoredInventory(schools, rooms, owners)

    async def _in_scope(
        self, rows: list[InventoryRow | RowError], call: Call
    ) -> tuple[list[InventoryRow | RowError], dict[str, str]]:
        """Rows of schools the caller may not change become RowErrors; an access point
        or server moved from another school needs that school too."""
        stored: dict[type, dict[str, str]] = {}
        for kind, item_type in ((TargetKind.AP, AccessPoint), (TargetKind.SERVER, Server)):
            ids = [
                item_id(r.item)
                for r in rows
                if isinstance(r, InventoryRow) and isinstance(r.item, item_type)
            ]
            stored[item_type] = await self.guard.off_loop(self._infra.target_schools, kind, ids)
        denied: dict[str, str] = {}
        checked: list[InventoryRow | RowError] = []
        for row in rows:
            why = None
            if isinstance(row, InventoryRow):
                item = row.item
                school = item.school_id
                why = access.refusal(call.who, Need.CHANGE, call.action, school)
                # An access point or server moved from another school needs that school
                # too; which school is not said (it is the other school's to know).
                home = stored.get(type(item), {}).get(item_id(item), "")
                moved = home not in ("", school)
                if why is None and moved and access.refusal(call.who, Need.CHANGE, "", home):
                    school = home
                    why = f"{WORDS[kind_of(item)]} {item_id(item)} belongs to another school"
                if why is not None:
                    denied.setdefault(school, why)
            checked.append(row if why is None else RowError(row.line, why))
        return checked, denied

    @guarded("inventory.import", Need.CHANGE, audited=True)
    async def ImportInventory(
        self, request: admin_pb2.ImportInventoryRequest, call: Call
    ) -> admin_pb2.ImportInventoryResponse:
        call.target = request.source[:200]
        if len(request.items) > IMPORT_MAX:
            raise invalid(f"at most {IMPORT_MAX} rows per import, got {len(request.items)}")
        # Every row is checked again here: schoolctl's checks are a courtesy.
        parsed = [parse_item(item.line, *item_fields(item)) for item in request.items]
        rows, denied = await self._in_scope(parsed, call)
        passed = [r for r in rows if isinstance(r, InventoryRow)]
        good, errors = check_inventory(rows, await self._stored(passed, call.who.scope))
        counts = InventoryCounts(0, 0, 0)
        if good and not request.dry_run:
            items = [r.item for r in good]
            counts = await self.guard.off_loop(
                self._infra.save_inventory,
                [i for i in items if isinstance(i, School)],
                [i for i in items if isinstance(i, Room)],
                [i for i in items if isinstance(i, AccessPoint)],
                [i for i in items if isinstance(i, Server)],
                self.guard.now(),
            )
        found = await import_done(
            self.guard,
            call,
            dry_run=request.dry_run,
            rows=len(request.items),
            counts=asdict(counts),
            schools={r.item.school_id for r in good},
            denied=denied,
            errors=errors,
        )
        return admin_pb2.ImportInventoryResponse(**asdict(counts), errors=found)

    @guarded("aps.list", Need.READ)
    async def ListAccessPoints(
        self, request: admin_pb2.ListAccessPointsRequest, call: Call
    ) -> admin_pb2.ListAccessPointsResponse:
        school_id = _school_filter(request.school_id, call)
        limit = min(request.page_size or PAGE_DEFAULT, PAGE_MAX)
        query = functools.partial(
            self._infra.list_access_points,
            school_id,
            call.who.scope,
            down_only=request.down_only,
            after_id=request.page_token,
            limit=limit,
        )
        found: list[TargetStatus] = await self.guard.off_loop(query)
        return admin_pb2.ListAccessPointsResponse(
            access_points=[target_to_pb(t) for t in found],
            next_page_token=found[-1].target.target_id if len(found) == limit else "",
        )

    @guarded("servers.list", Need.READ)
    async def ListServers(
        self, request: admin_pb2.ListServersRequest, call: Call
    ) -> admin_pb2.ListServersResponse:
        school_id = _school_filter(request.school_id, call)
        query = functools.partial(
            self._infra.list_servers,
            school_id,
            call.who.scope,
            down_only=request.down_only,
        )
        found: list[TargetStatus] = await self.guard.off_loop(query)
        return admin_pb2.ListServersResponse(servers=[target_to_pb(t) for t in found])

    @guarded("aps.unknown", Need.READ)
    async def ListUnknownBssids(
        self, request: admin_pb2.ListUnknownBssidsRequest, call: Call
    ) -> admin_pb2.ListUnknownBssidsResponse:
        school_id = _school_filter(request.school_id, call)
        schools = frozenset({school_id}) if school_id else call.who.scope
        found: list[UnknownBssid] = await self.guard.off_loop(self._infra.unknown_bssids, schools)
        return admin_pb2.ListUnknownBssidsResponse(
            bssids=[unknown_bssid_to_pb(u) for u in found[:UNKNOWN_MAX]],
            more=max(0, len(found) - UNKNOWN_MAX),
        )

    async def _server(self, server_id: str, call: Call, need: Need) -> TargetStatus:
        if not valid_id(server_id):
            raise invalid(f"server id {server_id[:80]!r} is not valid")
        call.target = server_id
        server = await self.guard.off_loop(self._infra.get_server, server_id)
        schools = None if server is None else [server.target.school_id]
        call.allow_target(need, schools, f"server {server_id!r}")
        assert server is not None
        return server

    @guarded("servers.show", Need.READ)
    async def GetServer(
        self, request: admin_pb2.GetServerRequest, call: Call
    ) -> admin_pb2.InfraTarget:
        return target_to_pb(await self._server(request.server_id, call, Need.READ))

    @guarded("servers.trust", Need.CHANGE, audited=True)
    async def TrustServerKey(
        self, request: admin_pb2.TrustServerKeyRequest, call: Call
    ) -> admin_pb2.InfraTarget:
        server = await self._server(request.server_id, call, Need.CHANGE)
        seen = server.latest.seen_key if server.latest is not None else None
        pinned = server.target.pinned_key
        if seen is None:
            if pinned is not None:
                raise _precondition(
                    f"server {request.server_id}'s key {pinned.fingerprint()} is pinned "
                    "and no other key was seen: nothing to trust"
                )
            raise _precondition(
                f"no host key seen yet for server {request.server_id}: "
                "wait for its next probe (schoolctl servers show)"
            )
        if request.fingerprint and request.fingerprint != seen.fingerprint():
            raise _precondition(
                f"server {request.server_id} now shows key {seen.fingerprint()}, "
                f"not {request.fingerprint}: look again (schoolctl servers show)"
            )
        key = await self.guard.off_loop(
            self._infra.trust_host_key,
            TargetKind.SERVER,
            request.server_id,
            self.guard.now(),
            seen,
        )
        if key is None:
            raise _precondition(
                f"server {request.server_id} showed another key meanwhile: look again"
            )
        call.done = f"pinned {key.key_type} {key.fingerprint()}"
        trusted = await self.guard.off_loop(self._infra.get_server, request.server_id)
        return target_to_pb(trusted or server)
