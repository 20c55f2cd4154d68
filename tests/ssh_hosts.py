"""Real SSH test hosts: each a network namespace with its own address and its own sshd
on keys made for the run, and a private view of the folders playbooks write. Root only:
mark the tests that use them with ``tests.netns.needs_root``.

For N hosts:

- One bridge in the machine's namespace holds the first address of a free subnet of
  198.18.0.0/15; each host is a namespace joined to it by a veth pair, its ``eth0`` on
  the next address. One bridge and one connected route scale to hundreds of hosts,
  where a routed veth per host would need its own route and address pair.
- Each sshd starts under ``unshare --mount --propagation private``, where every private
  folder starts empty (a tmpfs over it, or made inside a copy-on-write overlay of its
  parent where the machine has no such folder: nothing is created on the machine);
  root's home starts empty too, as on a fresh device (and bash, which sshd runs every
  command with, finds none of this machine's dotfiles), and ``/run`` (sshd's privilege
  separation folder, utmp) and ``/var/log`` (login records) are copy-on-write overlays.
  So nothing a session writes reaches the machine or another host. The mounts live and
  die with the sshd's mount namespace.
- Keys: one client key (ed25519) and one host key per host, all made for this run; a
  known_hosts file pins each host's key to its address, so paramiko (``RejectPolicy``)
  and ssh (``StrictHostKeyChecking=yes``) verify every host.

Teardown is registered before each set-up step, processes are stopped by pid and
namespaces deleted by their unique names.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path, PurePosixPath

import psutil
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.debian_tools import need
from tests.netns import ip, ip_json, namespace

SSHD = "/usr/sbin/sshd"
BENCHMARK_NET = IPv4Network("198.18.0.0/15")
DEFAULT_PRIVATE_DIRS = ("/etc/schoolfleet", "/var/lib/schoolfleet", "/opt/schoolfleet")
_COPY_ON_WRITE = ("/run", "/var/log")
# Private in every host: sshd's privilege separation folder, which it will not start
# without (Debian makes it at boot), and root's home, where Ansible keeps its remote
# tmp. This machine's ~/.bashrc runs `pyenv init`, which would add ~0.4 s of CPU to
# every command a session runs (measured: 50 -> 13 core-s for 100 module runs).
_ALWAYS_PRIVATE = ("/run/sshd", "/root")
_START_TIMEOUT = 30.0
_SSHD_CONFIG = """\
ListenAddress {address}:22
HostKey {host_key}
# Every host shares the file system: no shared /run/sshd.pid.
PidFile none
UsePAM no
# The keys live under /tmp, which is writable by all.
StrictModes no
PermitRootLogin prohibit-password
AuthenticationMethods publickey
AuthorizedKeysFile {authorized_keys}
PasswordAuthentication no
KbdInteractiveAuthentication no
# Ansible moves files over SFTP.
Subsystem sftp internal-sftp
PrintMotd no
UseDNS no
"""

# A step of a host's mount set-up: ("overlay" | "tmpfs" | "mkdir", path).
MountStep = tuple[str, str]


@dataclass
class SshHost:
    """One test host: its namespace, address and sshd, and the files that reach it."""

    name: str
    address: str
    workdir: Path
    key_file: Path
    known_hosts: Path
    private_dirs: tuple[str, ...]
    namespace: str = ""
    veth: str = ""  # the machine's end of the host's link, on the run's bridge
    host_key: str = ""  # the host's public key, as pinned in known_hosts
    proc: subprocess.Popen[bytes] | None = None
    user: str = "root"
    gateway: str = ""  # the machine's address on the hosts' bridge

    @property
    def pid(self) -> int:
        """The sshd listener's pid (0 once stopped)."""
        return self.proc.pid if self.proc is not None else 0

    @property
    def log(self) -> Path:
        return self.workdir / "sshd.log"

    def session_pids(self) -> list[int]:
        """sshd's per-connection processes and theirs, found by parent pid."""
        return _descendants(self.proc.pid) if self.proc is not None else []

    def stop(self) -> None:
        """Stops sshd and its sessions by pid: the host then refuses connections."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        # Children first collected, while they can still be found by parent pid.
        stop_pids([proc.pid, *_descendants(proc.pid)])
        proc.wait(10)

    def read_file(self, path: str) -> str | None:
        """A file as this host sees it (in its sshd's mount namespace); None if absent.
        Needs the host running: its mount namespace ends with its sshd."""
        if self.proc is None:
            raise AssertionError(f"{self.name} is stopped; its private files are gone")
        done = subprocess.run(
            ["nsenter", "--target", str(self.proc.pid), "--mount", "cat", "--", path],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if done.returncode == 0:
            return done.stdout
        if "No such file or directory" in done.stderr:
            return None
        raise AssertionError(f"reading {path} on {self.name}: {done.stderr.strip()}")

    def ansible_vars(self) -> dict[str, str]:
        """Inventory variables that reach this host as root with the run's key, checking
        its host key against the pinned one (and nothing from ~/.ssh or /etc/ssh)."""
        ssh_args = (
            f"-F /dev/null -o UserKnownHostsFile={self.known_hosts} -o StrictHostKeyChecking=yes"
            " -o GlobalKnownHostsFile=/dev/null -o IdentitiesOnly=yes -o BatchMode=yes"
        )
        return {
            "ansible_host": self.address,
            "ansible_user": self.user,
            "ansible_ssh_private_key_file": str(self.key_file),
            "ansible_ssh_common_args": ssh_args,
            # The machine's own Python, named so that Ansible does not probe for one.
            "ansible_python_interpreter": "/usr/bin/python3",
        }

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@contextmanager
def ssh_hosts(
    count: int, *, private_dirs: Sequence[str] = DEFAULT_PRIVATE_DIRS
) -> Iterator[list[SshHost]]:
    """Starts ``count`` hosts, each seeing ``private_dirs`` empty and its own (see
    ``mount_plan``); yields them once every sshd answers, and removes it all afterwards."""
    if not Path(SSHD).exists():
        need(SSHD, "openssh-server")
    run = uuid.uuid4().hex[:6]
    with ExitStack() as stack:
        # In /tmp whatever TMPDIR says: the hosts' overlays must not cover it.
        temp = tempfile.TemporaryDirectory(prefix=f"sf-{run}-", dir="/tmp")
        work = Path(stack.enter_context(temp))
        plan = mount_plan(private_dirs, work)
        key_file = work / "id_ed25519"
        public_key = _write_key(key_file)
        (work / "authorized_keys").write_text(public_key + "\n")
        known_hosts = work / "known_hosts"

        subnet = _free_subnet(count)
        gateway, *addresses = (subnet.network_address + i for i in range(1, count + 2))
        bridge = f"sfb-{run}"
        stack.callback(_delete_link, bridge)
        ip("link", "add", bridge, "type", "bridge")
        ip("addr", "add", f"{gateway}/{subnet.prefixlen}", "dev", bridge)
        ip("link", "set", bridge, "up")

        hosts = []
        for i, address in enumerate(addresses):
            name, dirs = f"host-{i}", tuple(private_dirs)
            host = SshHost(name, str(address), work / name, key_file, known_hosts, dirs)
            host.gateway = str(gateway)
            _add_host(stack, host, f"sfv-{run}-{i}", bridge, subnet.prefixlen)
            hosts.append(host)
        known_hosts.write_text("".join(f"{h.address} {h.host_key}\n" for h in hosts))
        for host in hosts:
            stack.callback(host.stop)
            _start_sshd(host, plan, work)
        _wait_answering(hosts)
        yield hosts


def mount_plan(private_dirs: Iterable[str], workdir: Path) -> list[MountStep]:
    """The mounts that give a host its private view, in order: copy-on-write overlays
    over ``/run`` and ``/var/log``; then each private folder (and root's home) empty and
    private: a tmpfs over it where it exists in the host's view, else made inside a
    private parent (overlaying the nearest existing ancestor when there is none)."""
    steps: list[MountStep] = []
    roots: dict[PurePosixPath, str] = {}  # private mount point -> "tmpfs" | "overlay"
    made: set[PurePosixPath] = set()

    def nearest_root(path: PurePosixPath) -> str | None:
        hits = [r for r in roots if r == path or r in path.parents]
        return roots[max(hits, key=lambda r: len(r.parts))] if hits else None

    for cow in _COPY_ON_WRITE:
        if os.path.isdir(cow):
            steps.append(("overlay", cow))
            roots[PurePosixPath(cow)] = "overlay"
    # Sorted, so a folder's parent is handled before it.
    for raw in sorted({*_ALWAYS_PRIVATE, *private_dirs}):
        path = PurePosixPath(raw)
        if not path.is_absolute() or str(path) != raw or path == PurePosixPath("/"):
            raise ValueError(f"private folder {raw!r}: give a normalised absolute path")
        if re.search(r"[,:\s]", raw):
            raise ValueError(f"private folder {raw!r}: no commas, colons or spaces")
        if path in made:
            continue
        root = nearest_root(path)
        # Under a private tmpfs only what we made exists; elsewhere the machine's folder shows.
        if root != "tmpfs" and os.path.isdir(raw):
            steps.append(("tmpfs", raw))
            roots[path] = "tmpfs"
        else:
            if root is None:
                ancestor = next(p for p in path.parents if os.path.isdir(p))
                if ancestor == PurePosixPath("/"):
                    raise ValueError(f"private folder {raw!r}: its parent folder must exist")
                steps.append(("overlay", str(ancestor)))
                roots[ancestor] = "overlay"
            steps.append(("mkdir", raw))
        made.add(path)
    for point in roots:
        if point == PurePosixPath(workdir) or point in PurePosixPath(workdir).parents:
            raise ValueError(f"private folder {point} would hide the run's folder {workdir}")
    return steps


def stop_pids(pids: Iterable[int], timeout: float = 5) -> None:
    """SIGTERM, then SIGKILL whatever is left after ``timeout``. A zombie counts as gone:
    an orphan's zombie waits for this machine's init, which reaps when it likes."""
    procs: list[psutil.Process] = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            proc.send_signal(signal.SIGTERM)
            procs.append(proc)
        except psutil.NoSuchProcess:
            continue
    for proc in _wait_gone(procs, timeout):
        proc.kill()


def is_alive(proc: psutil.Process) -> bool:
    """Running and not a zombie."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stop_control_masters(control_dir: Path) -> list[int]:
    """Stops the ssh ControlPersist masters whose sockets are in ``control_dir``, with
    ``ssh -O exit``; returns their pids, which are gone by the time it returns."""
    masters: list[psutil.Process] = []
    for sock in sorted(control_dir.iterdir()):
        if not sock.is_socket():
            continue
        # With a literal ControlPath, the host name on the command line is not used.
        base = ["ssh", "-F", "/dev/null", "-o", f"ControlPath={sock}"]
        check = subprocess.run(
            [*base, "-O", "check", "master"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if found := re.search(r"pid=(\d+)", check.stderr):
            with contextlib.suppress(psutil.NoSuchProcess):
                masters.append(psutil.Process(int(found.group(1))))
        subprocess.run(
            [*base, "-O", "exit", "master"], capture_output=True, timeout=10, check=False
        )
    if left := _wait_gone(masters, 10):
        raise AssertionError(f"ssh control masters still running: {[p.pid for p in left]}")
    return [p.pid for p in masters]


def _add_host(stack: ExitStack, host: SshHost, veth: str, bridge: str, prefixlen: int) -> None:
    """Gives ``host`` its namespace, joined to the bridge, and its own host key."""
    ns = host.namespace = stack.enter_context(namespace())
    host.veth = veth
    # Anything still in the namespace when it goes, by the pids the kernel lists for it.
    stack.callback(_stop_namespace_pids, ns)
    stack.callback(_delete_link, veth)
    ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
    ip("link", "set", veth, "master", bridge, "up")
    ip("-n", ns, "addr", "add", f"{host.address}/{prefixlen}", "dev", "eth0")
    ip("-n", ns, "link", "set", "eth0", "up")
    # As on a school's network (an agent in the host judges its network by this route);
    # nothing the tests send leaves the hosts' subnet.
    ip("-n", ns, "route", "add", "default", "via", host.gateway)
    host.workdir.mkdir(mode=0o700)
    host.host_key = _write_key(host.workdir / "ssh_host_ed25519_key")


def _start_sshd(host: SshHost, plan: list[MountStep], work: Path) -> None:
    config = host.workdir / "sshd_config"
    config.write_text(
        _SSHD_CONFIG.format(
            address=host.address,
            host_key=host.workdir / "ssh_host_ed25519_key",
            authorized_keys=work / "authorized_keys",
        )
    )
    script = _mount_script(plan, host.workdir / "mnt")
    script += f"exec {SSHD} -D -f {shlex.quote(str(config))} -E {shlex.quote(str(host.log))}\n"
    (host.workdir / "mnt").mkdir()
    # ip netns exec and unshare both exec, so the pid is sshd's own.
    argv = ["ip", "netns", "exec", host.namespace]
    argv += ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
    with host.log.open("ab") as log:
        host.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)


def _mount_script(plan: list[MountStep], scratch: Path) -> str:
    """Shell lines that carry out ``plan``; overlay layers go on a tmpfs at ``scratch``
    mounted in the same private namespace, so they vanish with it."""
    q = shlex.quote
    lines = ["set -e", f"mount -t tmpfs -o mode=0700 sf-scratch {q(str(scratch))}"]
    for index, (kind, path) in enumerate(plan):
        if kind == "overlay":
            upper, work = scratch / f"upper{index}", scratch / f"work{index}"
            options = f"lowerdir={path},upperdir={upper},workdir={work}"
            lines.append(f"mkdir {q(str(upper))} {q(str(work))}")
            lines.append(f"mount -t overlay sf-cow -o {q(options)} {q(path)}")
        elif kind == "tmpfs":
            lines.append(f"mount -t tmpfs -o mode=0755 sf-private {q(path)}")
        else:
            lines.append(f"mkdir -p -m 0755 {q(path)}")
    return "\n".join(lines) + "\n"


def _write_key(path: Path) -> str:
    """Writes a new ed25519 private key (OpenSSH format, mode 0600); returns its public key."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(private)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return public.decode()


def _free_subnet(count: int) -> IPv4Network:
    """A random subnet of 198.18.0.0/15 with room for ``count`` hosts and the bridge,
    overlapping no address or route of the machine's namespace (another run's, say)."""
    host_bits = max(8, (count + 2).bit_length())
    routes = ip_json("-4", "route", "show", "table", "all")
    used = [IPv4Network(r["dst"], False) for r in routes if r.get("dst", "default") != "default"]
    for link in ip_json("-4", "addr"):
        for info in link.get("addr_info", []):
            used.append(IPv4Network(f"{info['local']}/{info['prefixlen']}", False))
    candidates = list(BENCHMARK_NET.subnets(new_prefix=32 - host_bits))
    random.shuffle(candidates)
    for net in candidates:
        if not any(net.overlaps(u) for u in used):
            return net
    raise AssertionError(f"no free subnet for {count} hosts in {BENCHMARK_NET}")


def _wait_answering(hosts: list[SshHost]) -> None:
    """Waits until every sshd sends its banner to a connection from this namespace."""
    pending = list(hosts)
    deadline = time.monotonic() + _START_TIMEOUT
    while pending:
        for host in list(pending):
            if host.proc is not None and host.proc.poll() is not None:
                raise AssertionError(f"sshd of {host.name} exited:\n{host.log_text()}")
            if _answers(host.address):
                pending.remove(host)
        if pending and time.monotonic() > deadline:
            names = ", ".join(h.name for h in pending)
            raise AssertionError(f"sshd did not answer in {_START_TIMEOUT}s on {names}")
        if pending:
            time.sleep(0.05)


def _answers(address: str) -> bool:
    try:
        with socket.create_connection((address, 22), timeout=1) as conn:
            return conn.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def _descendants(pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _stop_namespace_pids(ns: str) -> None:
    done = subprocess.run(
        ["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=30, check=False
    )
    stop_pids(int(pid) for pid in done.stdout.split())


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Waits up to ``timeout`` for ``procs`` to end; returns those still alive."""
    deadline = time.monotonic() + timeout
    while any(is_alive(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.01)
    return [p for p in procs if is_alive(p)]


def _delete_link(name: str) -> None:
    subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=30, check=False)
