"""The reconnect storm after a replica dies: mutual-TLS devices behind HAProxy on three
replicas sharing one PostgreSQL database, the replica holding the lesson dispatcher's
lease killed with SIGKILL.

The devices are bench/restart_storm.py's (enrolled through the real Enroll call, run by
bench/storm_devices.py with the agent's reconnect rule), all given HAProxy's address
(tests/haproxy.py: TCP mode, least connections, a dead replica's sessions cut, a
connection to it redispatched). A killed replica says nothing to its devices: each
sees its connection go, and comes back after a wait drawn from the spread its Welcome
named (common/retry_hint.py ``unsaid_restart``), through the balancer, to a survivor.

Measured per round: from the SIGKILL, when every device that lost its stream has a
Welcome again (and half, and 90%); when a survivor holds the dispatcher's lease; what
ended attempts said; and at the end of the round, whether every heartbeat a device
was acked is in the store.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from bench.observe import scrape
from bench.procs import RunFailed, Target, stop_process
from bench.restart_storm import SCHOOL, end_worker, enroll_all, spawn_worker, unstored
from bench.scale_pg import BenchPg
from bench.scale_procs import enroll_port, kill, start_replica
from common.secret_hash import hash_secret
from controller.enroll import tokens as enrollment
from controller.stores import open_stores
from tests.haproxy import HaProxy
from tests.procs import init_controller_ca

log = logging.getLogger("bench")

DISPATCHER = "lesson-dispatcher"
# The production defaults a storm runs with: 30 s heartbeats, mutual TLS.
SETTINGS = {"agent_tls": "true", "enroll_listen": "127.0.0.1:0", "heartbeat_interval": "30"}
# Seconds to wait for every device's first stream, and for every device to be back.
CONNECT_SECONDS = 300.0
BACK_SECONDS = 180.0


@dataclass
class StormLog:
    """What the device workers printed, by device: Welcomes and ended attempts."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    welcomes: dict[int, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    # device -> (time, phase, code, the controller's hint or the details)
    ends: dict[int, list[tuple[float, str, str, str]]] = field(
        default_factory=lambda: collections.defaultdict(list)
    )
    acked: dict[str, int] = field(default_factory=dict)
    # Welcomes naming a stored sequence below the device's highest ack so far: an acked
    # heartbeat lost, seen when the device comes back (its later acks would hide it):
    # (device, acked, stored).
    behind: list[tuple[int, int, int]] = field(default_factory=list)

    def take(self, line: str) -> None:
        record = json.loads(line)
        with self.lock:
            if record["e"] == "w":
                self.welcomes[record["d"]].append(record["t"])
                if record["s"] < record["a"]:
                    self.behind.append((record["d"], record["a"], record["s"]))
            elif record["e"] == "f":
                what = f"hint={record['h']}" if record["h"] else str(record["x"])[:70]
                self.ends[record["d"]].append((record["t"], record["p"], record["c"], what))
            elif record["e"] == "acked":
                self.acked.update(record["acked"])

    def connected(self, devices: int) -> bool:
        with self.lock:
            return all(self.welcomes.get(i) for i in range(devices))

    def back(self, since: float) -> tuple[list[float], int]:
        """Seconds from ``since`` until each device whose stream ended after it had a
        Welcome again (one that has not yet: absent), and how many ended."""
        with self.lock:
            return back_times(since, self.ends, self.welcomes)

    def noticed(self, since: float) -> list[float]:
        """Seconds from ``since`` until each device saw its stream end."""
        with self.lock:
            return noticed_times(since, self.ends)

    def ended_since(self, since: float) -> collections.Counter[tuple[str, str, str]]:
        with self.lock:
            return collections.Counter(
                (phase, code, what)
                for ends in self.ends.values()
                for t, phase, code, what in ends
                if t >= since
            )


def back_times(
    since: float,
    ends: dict[int, list[tuple[float, str, str, str]]],
    welcomes: dict[int, list[float]],
) -> tuple[list[float], int]:
    """For each device with an attempt ended at or after ``since``: seconds from
    ``since`` to its first Welcome after that end (devices without one yet are left
    out); and how many devices lost their stream."""
    back, lost = [], 0
    for device, device_ends in ends.items():
        first_end = min((t for t, *_ in device_ends if t >= since), default=None)
        if first_end is None:
            continue
        lost += 1
        again = min((t for t in welcomes.get(device, ()) if t > first_end), default=None)
        if again is not None:
            back.append(again - since)
    return sorted(back), lost


def noticed_times(since: float, ends: dict[int, list[tuple[float, str, str, str]]]) -> list[float]:
    """For each device with an attempt ended at or after ``since``: seconds from
    ``since`` to the first such end, sorted."""
    firsts = (min((t for t, *_ in e if t >= since), default=None) for e in ends.values())
    return sorted(t - since for t in firsts if t is not None)


@dataclass(frozen=True, slots=True)
class StormRound:
    """One replica killed with every device connected."""

    streams_before: tuple[int, ...]
    victim: int
    lost: int
    back_all_s: float
    back_median_s: float
    back_p90_s: float
    lease_taken_s: float
    # When the devices saw their stream end: the median and the last.
    noticed_median_s: float
    noticed_max_s: float
    ended: dict[str, int]
    acked_ok: bool
    acked_devices: int


def _mint(url: str, devices: int) -> str:
    """An enrollment token for every device, put in the store as the admin API would."""
    token, secret = enrollment.mint(SCHOOL, devices, 3600, time.time())
    stores = open_stores(url)
    try:
        stores.enrollments.add_enroll_token(token, hash_secret(secret))
    finally:
        stores.close()
    return secret


def stored_seqs(url: str) -> dict[str, int]:
    """Each device's highest stored heartbeat (``last_seq``) in the PostgreSQL store."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT device_id, last_seq FROM devices").fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


@dataclass
class Storm:
    """The CA, the database and the enrolled devices every round shares."""

    pg: BenchPg
    devices: int
    workdir: Path
    url: str = ""
    rows_file: Path = Path()

    @property
    def ca_file(self) -> Path:
        return self.workdir / "ca-data" / "pki" / "ca.crt"

    async def prepare(self) -> None:
        """A CA (`schoolfleet-controller init`), a fresh database, an enrollment token;
        every device enrolled through one replica's Enroll."""
        await asyncio.to_thread(init_controller_ca, self.workdir / "ca-data")
        self.url = self.pg.fresh_database()
        secret = await asyncio.to_thread(_mint, self.url, self.devices)
        async with contextlib.AsyncExitStack() as stack:
            target = await self._replica(self.workdir / "enroll", "r0")
            stack.push_async_callback(stop_process, target.proc)
            started = time.monotonic()
            rows = await asyncio.to_thread(
                enroll_all, enroll_port(target), self.ca_file.read_bytes(), secret, self.devices
            )
            log.info("enrolled %d devices in %.0fs", len(rows), time.monotonic() - started)
        self.rows_file = self.workdir / "devices.json"
        self.rows_file.write_text(json.dumps(rows))

    def close(self) -> None:
        if self.url:
            self.pg.drop(self.url)

    async def _replica(self, folder: Path, name: str) -> Target:
        # Every replica has the CA: docs/security.md (copied by an administrator).
        shutil.copytree(self.workdir / "ca-data", folder / name / "data")
        return await start_replica(folder, self.url, SETTINGS, name)

    async def round(self, index: int, replicas: int = 3) -> StormRound:
        """Replicas, HAProxy and the devices; every device connected, the dispatcher's
        replica killed; until every device is back."""
        folder = self.workdir / f"round{index}"
        folder.mkdir()
        events = StormLog()
        async with contextlib.AsyncExitStack() as stack:
            targets = []
            for n in range(replicas):
                target = await self._replica(folder, f"r{n + 1}")
                stack.push_async_callback(stop_process, target.proc)
                targets.append(target)
            lb = HaProxy(folder, [("127.0.0.1", t.grpc_port) for t in targets])
            await asyncio.to_thread(lb.start)
            stack.callback(lb.stop)
            worker = self._worker(folder, lb.address, events)
            stack.callback(end_worker, worker)
            await _wait(lambda: events.connected(self.devices), CONNECT_SECONDS, "first streams")
            await asyncio.sleep(5.0)
            pages = await asyncio.gather(*(scrape(t.metrics_port) for t in targets))
            streams = tuple(int(p.value("schoolfleet_connected_streams")) for p in pages)
            holder = [
                n
                for n, p in enumerate(pages)
                if p.value("schoolfleet_lease_held", lease=DISPATCHER)
            ]
            if len(holder) != 1:
                raise RunFailed(f"dispatcher lease held by {len(holder)} replicas")
            victim = targets[holder[0]]
            survivors = [t for t in targets if t is not victim]
            killed = await kill(victim)
            lease_at = asyncio.create_task(_lease_taken(survivors))

            def all_back() -> bool:
                back, lost = events.back(killed)
                return lost >= streams[holder[0]] and len(back) == lost

            await _wait(all_back, BACK_SECONDS, "every device back")
            taken = await asyncio.wait_for(lease_at, 60.0) - killed
            back, lost = events.back(killed)
            noticed = events.noticed(killed)
            ended = events.ended_since(killed)
            acked_ok, acked = await asyncio.to_thread(self._acked_stored, worker, events)
        return StormRound(
            streams_before=streams,
            victim=holder[0] + 1,
            lost=lost,
            back_all_s=back[-1],
            back_median_s=statistics.median(back),
            back_p90_s=back[int(0.9 * (len(back) - 1))],
            lease_taken_s=taken,
            noticed_median_s=statistics.median(noticed),
            noticed_max_s=noticed[-1],
            ended={f"{p} Welcome, {c}, {w}": n for (p, c, w), n in ended.most_common()},
            acked_ok=acked_ok,
            acked_devices=acked,
        )

    def _worker(self, folder: Path, address: str, events: StormLog) -> subprocess.Popen[str]:
        with (folder / "devices.log").open("w") as stderr:
            return spawn_worker(address, self.ca_file, self.rows_file, events.take, stderr)

    def _acked_stored(self, worker: subprocess.Popen[str], events: StormLog) -> tuple[bool, int]:
        """Stops the devices; whether every heartbeat acked to one is in the store."""
        end_worker(worker)
        short = unstored(events.acked, stored_seqs(self.url))
        whole = not short and not events.behind and len(events.acked) == self.devices
        return whole, len(events.acked)


async def _lease_taken(survivors: list[Target]) -> float:
    """The wall time a survivor first shows the dispatcher's lease held."""
    while True:
        pages = await asyncio.gather(*(scrape(t.metrics_port) for t in survivors))
        if any(p.value("schoolfleet_lease_held", lease=DISPATCHER) for p in pages):
            return time.time()
        await asyncio.sleep(0.1)


async def _wait(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise RunFailed(f"no {what} within {within:g}s")
        await asyncio.sleep(0.05)


async def storm_rounds(pg: BenchPg, devices: int, rounds: int, keep: bool) -> list[StormRound]:
    """``rounds`` rounds on one database with ``devices`` enrolled devices."""
    workdir = Path(tempfile.mkdtemp(prefix="schoolfleet-scale-storm-"))
    storm = Storm(pg, devices, workdir)
    try:
        await storm.prepare()
        results = []
        for index in range(1, rounds + 1):
            result = await storm.round(index)
            log.info(
                "storm round %d: %d lost, all back %.1fs (half %.1fs), lease %.1fs, acked ok %s",
                index,
                result.lost,
                result.back_all_s,
                result.back_median_s,
                result.lease_taken_s,
                result.acked_ok,
            )
            results.append(result)
        return results
    finally:
        storm.close()
        if keep:
            log.info("kept %s", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
