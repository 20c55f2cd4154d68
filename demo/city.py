"""`make demo-city`: a city on one machine. Three controller replicas share one
PostgreSQL database behind Debian's HAProxy (TCP), and simulated devices in three
schools enroll and stream through the balancer, as real processes; it prints what to
try, killing a replica included.

python demo/city.py start   # starts what of it is not running and prints what to try

Everything lives in .demo/city/: the PostgreSQL cluster (pg/, initdb'd as the
`postgres` account under root, reached by a Unix socket there only), each replica's
data folder (replica-N/data, the CA made once and copied to the others), HAProxy's
configuration, the agents' files, the logs and the pids. A start while everything runs
says so and prints what to try again; a start after some of it stopped (a replica
killed, say) starts what is missing, on the same ports. A start that fails stops the
city demo. `make demo-stop` (demo/stop.py) stops it all by pid, PostgreSQL last.
SCHOOLFLEET_DEMO_DIR and SCHOOLFLEET_DEMO_CITY_PORT (the first of fourteen ports)
move it, so that a test can run one beside a person's.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script (``python demo/city.py``) the repository root is not on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import os
import re
import shutil
import socket
import time
import urllib.request
from dataclasses import dataclass

from demo import balancer, lessons, pids
from demo.errors import DemoError
from demo.fleet import Device, Site
from demo.layout import BIN, CITY, CITY_CLUSTER, CITY_PIDS, ROOT, shown
from demo.pg import Account, Cluster, ClusterError, server_bindir
from demo.stop import stop_city

_PORT = int(os.environ.get("SCHOOLFLEET_DEMO_CITY_PORT") or 7450)
# The balancer: agents' streams (mutual TLS), and enrollment and schoolctl (TLS).
BALANCER = f"127.0.0.1:{_PORT}"
BALANCER_PUBLIC = f"127.0.0.1:{_PORT + 1}"
REPLICAS = 3
# Short, for the demo: a dead holder's work is taken over within this and a fifth.
LEASE_SECONDS = 5
HEARTBEAT_SECONDS = 5
# HAProxy reaches the replicas from this loopback address, which their proxy_from
# trusts: schoolctl and devices on this machine connect from 127.0.0.1, as they are.
BALANCER_SOURCE = "127.0.0.2"
DATABASE = "schoolfleet"
# The packages `make demo-city` needs beyond `make demo`'s (.ci/packages.sh has them too).
PACKAGES = ("postgresql", "haproxy")

SCHOOLS = ("school-2101", "school-2102", "school-2103")
DEVICES = [
    device
    for school in SCHOOLS
    for device in (
        Device(f"panel-{school[-4:]}-101", "panel", school, "room-101"),
        Device(f"panel-{school[-4:]}-102", "panel", school, "room-102"),
        Device(f"laptop-{school[-4:]}-t01", "laptop", school, "room-101"),
    )
]


@dataclass(frozen=True, slots=True)
class Replica:
    """Controller replica ``n`` (1, 2, 3): its folder and its four loopback ports."""

    n: int

    @property
    def name(self) -> str:
        return f"replica-{self.n}"

    @property
    def folder(self) -> Path:
        return CITY / self.name

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def port(self, offset: int) -> int:
        """gRPC (0), metrics (1), enrollment and schoolctl (2), uplink (3)."""
        return _PORT + 4 * self.n - 2 + offset

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.port(1)}/metrics"

    def write_config(self, database: str) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "controller.toml"
        config.write_text(
            f'listen = "127.0.0.1:{self.port(0)}"\n'
            f'metrics_listen = "127.0.0.1:{self.port(1)}"\n'
            f'enroll_listen = "127.0.0.1:{self.port(2)}"\n'
            f'uplink_listen = "127.0.0.1:{self.port(3)}"\n'
            f'data_dir = "{self.data}"\ndatabase = "{database}"\n'
            f"heartbeat_interval = {HEARTBEAT_SECONDS}\nlease_seconds = {LEASE_SECONDS}\n"
            f'ports_file = "{self.folder / "ports.json"}"\n'
            'content_hosts = ["lessons.example.edu"]\nlesson_lead = 10\nlesson_settle = 10\n'
            f'playbooks_dir = "{ROOT / "playbooks"}"\n'
            # HAProxy names each client in a PROXY header (docs/security.md).
            f'proxy_from = ["{BALANCER_SOURCE}"]\n'
        )
        return config

    def figures(self) -> tuple[int, list[str]] | None:
        """The streams this replica holds and the leases it holds, from its /metrics;
        None when it does not answer."""
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=2) as answer:  # noqa: S310
                text = answer.read().decode()
        except OSError:
            return None
        streams = re.search(r"^schoolfleet_connected_streams ([0-9.e+]+)$", text, re.M)
        held = re.findall(r'^schoolfleet_lease_held\{lease="([^"]+)"\} 1\.0$', text, re.M)
        return int(float(streams.group(1))) if streams else 0, sorted(held)


REPLICA_SET = [Replica(n) for n in range(1, REPLICAS + 1)]
FIRST = REPLICA_SET[0]
CLUSTER = Cluster(CITY_CLUSTER)
SITE = Site(
    folder=CITY,
    agents=BALANCER,
    public=BALANCER_PUBLIC,
    # Made once, in the first replica's folder; the others hold copies.
    ca_cert=FIRST.data / "pki" / "ca.crt",
    database=CLUSTER.url(DATABASE),
)
RECORD = pids.PidFile(CITY_PIDS, CITY)
NAMES = ["postgres", *(r.name for r in REPLICA_SET), "haproxy", *(d.device_id for d in DEVICES)]


@dataclass(frozen=True, slots=True)
class _Programs:
    """The Debian programs the city needs, found."""

    pg_bindir: Path
    haproxy: str


def _programs() -> _Programs:
    view = os.environ.get("SCHOOLFLEET_TOOLS_PATH")
    if view is None:
        bindir, haproxy = server_bindir(), balancer.binary()
    else:
        # A test's view of the machine's programs, the whole truth (.ci/packages.sh too).
        initdb = shutil.which("initdb", path=view)
        bindir = Path(initdb).resolve().parent if initdb else None
        haproxy = shutil.which("haproxy", path=view)
    missing = [
        package for package, found in zip(PACKAGES, (bindir, haproxy), strict=True) if found is None
    ]
    if bindir is None or haproxy is None:
        listed = " ".join(missing)
        raise DemoError(
            f"make demo-city needs Debian packages that are not installed: {listed}; as root "
            f"run: apt-get update && apt-get install -y --no-install-recommends {listed}"
        )
    return _Programs(bindir, haproxy)


def start() -> None:
    """Starts what of the city is not running; prints what to try."""
    programs = _programs()
    alive = RECORD.alive()
    missing = [name for name in NAMES if name not in alive]
    if not missing:
        print(
            f"the city demo is already running ({REPLICAS} replicas, HAProxy, PostgreSQL and "
            f"{len(DEVICES)} devices); make demo-stop stops it"
        )
        print(_try_text(lessons.first_lesson_words(SITE)))
        return
    if alive:
        them = "it" if len(missing) == 1 else "them"
        print(f"the city demo was running without {', '.join(missing)}: starting {them} again")
    try:
        first = _start(programs, alive)
    except BaseException:
        print("demo: the start failed; stopping the city demo", file=sys.stderr)
        stop_city()
        raise
    print(_try_text(first))


def _start(programs: _Programs, alive: dict[str, int]) -> str:
    CITY.mkdir(parents=True, exist_ok=True)
    # A pid file from before a reboot names nobody; what runs is recorded again below.
    RECORD.forget()
    for name, pid in alive.items():
        RECORD.record(name, pid)
    database = _database(programs.pg_bindir)
    _certificate_authority()
    started = [
        (replica, _spawn_replica(replica, database))
        for replica in REPLICA_SET
        if replica.name not in alive
    ]
    for replica, pid in started:
        _wait_for_replica(replica, pid)
    if "haproxy" not in alive:
        _start_balancer(programs.haproxy)
    SITE.login()
    devices = [d for d in DEVICES if d.device_id not in alive]
    if devices:
        tokens = SITE.enroll_tokens(devices)
        for device in devices:
            argv = SITE.agent_argv(device, tokens[device.school])
            RECORD.record(device.device_id, pids.spawn(CITY, device.device_id, argv))
    # The replicas' /metrics first: a schoolctl a second would slow the agents' start.
    if not _wait_streams(len(DEVICES), 40) or not SITE.wait_online(len(DEVICES), 10):
        print(
            f"demo: not every device came online in 50 s; see {shown(CITY)}/*.log",
            file=sys.stderr,
        )
    # A day's lessons once per start of the whole city, not per replica brought back.
    if alive:
        return lessons.first_lesson_words(SITE)
    return lessons.schedule(SITE, DEVICES)


def _wait_streams(count: int, seconds: float) -> bool:
    """Whether the replicas hold ``count`` device streams between them within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        figures = [replica.figures() for replica in REPLICA_SET]
        if sum(f[0] for f in figures if f) == count:
            return True
        time.sleep(0.5)
    return False


def _database(bindir: Path) -> str:
    """The cluster made if new and started if stopped; the demo's database's URL."""
    try:
        account = Account.pick()
        if not (CLUSTER.data / "PG_VERSION").exists():
            CLUSTER.create(bindir, account)
        pid = CLUSTER.running_pid() or CLUSTER.start(bindir, account)
        RECORD.record("postgres", pid)
        return CLUSTER.ensure_database(DATABASE)
    except ClusterError as exc:
        raise DemoError(f"PostgreSQL: {exc}") from None


def _certificate_authority() -> None:
    """One CA for the city: made in the first replica's folder, copied to the others
    (each replica signs the certificates of the devices that enroll through it)."""
    if not SITE.ca_cert.exists():
        FIRST.folder.mkdir(parents=True, exist_ok=True)
        where = ["--data-dir", str(FIRST.data), "--address", "127.0.0.1"]
        SITE.must("schoolfleet-controller", "init", *where)
    for replica in REPLICA_SET[1:]:
        if not (replica.data / "pki" / "ca.crt").exists():
            replica.data.mkdir(mode=0o700, parents=True, exist_ok=True)
            shutil.rmtree(replica.data / "pki", ignore_errors=True)
            shutil.copytree(FIRST.data / "pki", replica.data / "pki")


def _spawn_replica(replica: Replica, database: str) -> int:
    config = replica.write_config(database)
    (replica.folder / "ports.json").unlink(missing_ok=True)
    argv = [str(BIN / "schoolfleet-controller"), "serve", "--config", str(config)]
    pid = pids.spawn(CITY, replica.name, argv)
    RECORD.record(replica.name, pid)
    return pid


def _wait_for_replica(replica: Replica, pid: int) -> None:
    deadline = time.monotonic() + 30
    while not (replica.folder / "ports.json").exists():
        if time.monotonic() > deadline or not pids.is_ours(pid, CITY):
            said = pids.last_words(CITY, replica.name)
            raise DemoError(
                f"{replica.name} did not start ({said}); see {shown(CITY)}/{replica.name}.log"
            )
        time.sleep(0.1)


def _start_balancer(haproxy: str) -> None:
    cfg = CITY / "haproxy.cfg"
    cfg.write_text(
        balancer.config(
            [
                balancer.Route(
                    "agents",
                    _PORT,
                    [("127.0.0.1", r.port(0)) for r in REPLICA_SET],
                    proxy_source=BALANCER_SOURCE,
                ),
                balancer.Route(
                    "public",
                    _PORT + 1,
                    [("127.0.0.1", r.port(2)) for r in REPLICA_SET],
                    proxy_source=BALANCER_SOURCE,
                ),
            ],
            check_ms=1000,
        )
    )
    # -db: in the foreground, so that the pid recorded is haproxy's own.
    pid = pids.spawn(CITY, "haproxy", [haproxy, "-db", "-f", str(cfg)])
    RECORD.record("haproxy", pid)
    deadline = time.monotonic() + 10
    while not _listening(_PORT) or not _listening(_PORT + 1):
        if time.monotonic() > deadline or not pids.is_ours(pid, CITY):
            said = pids.last_words(CITY, "haproxy")
            raise DemoError(f"HAProxy did not start ({said}); see {shown(CITY)}/haproxy.log")
        time.sleep(0.1)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _replica_lines(alive: dict[str, int]) -> tuple[list[str], Replica | None]:
    """A line per replica (pid, ports, streams, leases held); the dispatcher's replica."""
    lines, dispatcher = [], None
    for replica in REPLICA_SET:
        pid = alive.get(replica.name)
        figures = replica.figures() if pid else None
        if figures is None:
            state = "not running" if pid is None else "not answering"
            lines.append(f"  {replica.name}  {state}")
            continue
        streams, held = figures
        if "lesson-dispatcher" in held:
            dispatcher = replica
        lines.append(
            f"  {replica.name}  pid {pid:<7}  gRPC 127.0.0.1:{replica.port(0)}  "
            f"{replica.metrics_url}  {streams} streams  leases: {', '.join(held) or 'none'}"
        )
    return lines, dispatcher


def _try_text(first_lesson: str) -> str:
    city = shown(CITY)
    alive = RECORD.alive()
    lines, dispatcher = _replica_lines(alive)
    victim = dispatcher or FIRST
    ports = " ".join(str(r.port(1)) for r in REPLICA_SET)
    figures = r"grep -E '^schoolfleet_(connected_streams|lease_held.* 1\.0$)'"
    loop = (
        f'for p in {ports}; do echo "== :$p"; curl -s http://127.0.0.1:$p/metrics | {figures}; done'
    )
    front = f"agents {BALANCER}, enrollment and schoolctl {BALANCER_PUBLIC}"
    return f"""
SchoolFleet city demo is running: {REPLICAS} controller replicas sharing one PostgreSQL
database behind HAProxy, and {len(DEVICES)} simulated devices in {len(SCHOOLS)} schools,
each a real agent process that enrolled through the balancer and streams over mutual
TLS to whichever replica HAProxy gave it. Logs are in {city}/*.log.

  balancer    HAProxy (TCP) pid {alive.get("haproxy")}: {front}
{chr(10).join(lines)}
  database    PostgreSQL pid {alive.get("postgres")}: {SITE.database}

schoolctl reaches the replicas through the balancer, logged in as central ops
({city}/schoolctl.toml, mode 0600). Try:

  . {shown(BIN / "activate")}
  export SCHOOLCTL_CONFIG={SITE.schoolctl_config}
  schoolctl status
  schoolctl devices list
  schoolctl lessons today

Which replica holds which lease (the lesson dispatcher, probes, the store's gauges)
and how many streams each holds:

  {loop}

Lessons: two short ones in each panel's room, the first {first_lesson}.
Kill the replica holding the lesson dispatcher without a word, before a lesson:
its agents come back through the others within seconds, another replica takes the
lease within {LEASE_SECONDS * 1.2:g} s, and every panel still opens its lesson once:

  kill -9 {alive.get(victim.name)}          # {victim.name}
  (the curl loop above again: its streams and leases are on the others now)
  schoolctl devices list               # every device online
  grep -h "lesson event" {city}/panel-*.log

make demo-city again starts what was killed, on its old ports.
When done: make demo-stop (make demo-reset also forgets both demos' data)
"""


_COMMANDS = {"start": start}

if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "start"
    if command not in _COMMANDS:
        sys.exit(f"usage: city.py {'|'.join(_COMMANDS)}")
    try:
        _COMMANDS[command]()
    except DemoError as exc:
        sys.exit(f"demo: {exc}")
