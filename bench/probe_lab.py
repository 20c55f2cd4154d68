"""The probe benchmark's targets (bench/probes.py): sshd hosts in namespaces, and the
slow and silent ports a second process serves (``python bench/probe_lab.py SPEC``)."""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script the repository root is not on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncio
import contextlib
import json
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from ipaddress import IPv4Network
from typing import Any

from controller.infra.probes import offset
from inventory.infra import HostKey, ProbeTarget, TargetKind
from tests.netns import ip_json
from tests.ssh_hosts import SshHost, stop_pids

VARIANTS = ("tcp", "ssh", "tcp-up", "ssh-up")
# tcp-up probes each answering target this many times (under other ids), for a sample
# of TCP probes large enough to time.
_TCP_REPEAT = 10
GROUPS = ("sshd", "slow", "silent", "refused", "unreachable")
_NO_LISTENER_PORT = 2222
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


# -- the slow and silent ports (a separate process) ---------------------------------


async def _serve(spec: dict[str, Any]) -> None:
    """Listens as ``spec`` says, prints the ports as one JSON line, serves until killed."""
    address, delay = str(spec["address"]), float(spec["delay"])

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    def relay(upstream: str) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(delay)
            try:
                up_reader, up_writer = await asyncio.open_connection(upstream, 22)
            except OSError:
                writer.close()
                return
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

        return handle

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the prober gives up and closes
        writer.close()

    servers = [await asyncio.start_server(relay(str(up)), address, 0) for up in spec["upstreams"]]
    servers += [await asyncio.start_server(silent, address, 0) for _ in range(int(spec["silent"]))]
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    sys.stdout.write(json.dumps(ports) + "\n")
    sys.stdout.flush()
    await asyncio.Event().wait()


@contextlib.contextmanager
def listeners(address: str, upstreams: list[str], silent: int, delay: float) -> Iterator[list[int]]:
    """Starts the ports' process; yields its ports (relays first); stops it by pid."""
    spec = {"address": address, "upstreams": upstreams, "silent": silent, "delay": delay}
    proc = subprocess.Popen(
        [sys.executable, __file__, json.dumps(spec)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise AssertionError("the listeners' process exited before listening")
        yield [int(p) for p in json.loads(line)]
    finally:
        stop_pids([proc.pid])
        proc.wait(10)


# -- targets ---------------------------------------------------------------------------


def _key(host: SshHost) -> HostKey:
    kind, data = host.host_key.split()[:2]
    return HostKey(kind, data)


def _free_addresses(hosts: list[SshHost], count: int) -> list[str]:
    """Addresses of the hosts' subnet that nobody has."""
    bridge = ip_json("link", "show", hosts[0].veth)[0]["master"]
    info = ip_json("-4", "addr", "show", "dev", bridge)[0]["addr_info"][0]
    subnet = IPv4Network(f"{info['local']}/{info['prefixlen']}", strict=False)
    taken = {h.address for h in hosts} | {h.gateway for h in hosts}
    free = [str(a) for a in subnet.hosts() if str(a) not in taken]
    if len(free) < count:
        raise AssertionError(f"only {len(free)} free addresses in {subnet} for {count}")
    return free[-count:]


def targets(
    hosts: list[SshHost], ports: list[int], slow: int, refused: int, unreachable: int
) -> dict[str, list[tuple[str, ProbeTarget]]]:
    """Each variant's targets, each with its group; ``ports``: the slow ones', then the
    silent ones'."""
    ssh: list[tuple[str, ProbeTarget]] = []

    def add(group: str, address: str, port: int, key: HostKey | None) -> None:
        i = sum(1 for g, _ in ssh if g == group)
        kind = TargetKind.SERVER if group in ("sshd", "slow") else TargetKind.AP
        target = ProbeTarget(kind, f"{group}-{i}", f"school-{i % 20}", address, "root", port, key)
        ssh.append((group, target))

    gateway = hosts[0].gateway
    for host in hosts:
        add("sshd", host.address, 22, _key(host))
    for i, port in enumerate(ports[:slow]):
        add("slow", gateway, port, _key(hosts[i % len(hosts)]))
    for port in ports[slow:]:
        add("silent", gateway, port, _key(hosts[0]))
    for i in range(refused):
        add("refused", hosts[i % len(hosts)].address, _NO_LISTENER_PORT, None)
    for address in _free_addresses(hosts, unreachable):
        add("unreachable", address, 22, None)
    tcp = [(g, replace(t, ssh_user="")) for g, t in ssh]
    answering = [(g, t) for g, t in tcp if g in ("sshd", "slow", "silent")]
    variants = {
        "tcp": tcp,
        "ssh": ssh,
        "tcp-up": [
            (g, replace(t, target_id=f"{t.target_id}-{n}"))
            for n in range(_TCP_REPEAT)
            for g, t in answering
        ],
        "ssh-up": [(g, t) for g, t in ssh if g == "sshd"],
    }
    # In the order the schedule's offsets give, as a real cycle has them.
    return {
        v: sorted(ts, key=lambda gt: offset(gt[1].target_id, 1.0)) for v, ts in variants.items()
    }


if __name__ == "__main__":
    asyncio.run(_serve(json.loads(sys.argv[1])))
