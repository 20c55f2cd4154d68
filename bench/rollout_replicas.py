"""Rollouts over replicas: one rollout's wall time driven by one controller against two
controllers sharing one PostgreSQL database, the wave's slices claimed by both.

The hosts are real sshd in network namespaces (tests/ssh_hosts.py), registered once
through their agents with a controller on a throwaway PostgreSQL cluster
(bench/scale_pg.py); that database is the template every round's database is copied
from. A round runs the same rollout (bench/rollout_lab.py's two-task playbook on every
host, one wave: ``--canary 100% --wave-size 100%``) twice, on a fresh copy each time:
once with one controller and once with two, in an order that alternates from round to
round so the machine's drift falls on both alike. Every controller has
``rollout_slots=1`` (one slice at a time, whatever the load) and slices of
``--slice-hosts`` hosts (a quarter of the hosts by default: four slices in the wave).
With ``--host-seconds N`` the playbook has a third task that waits N seconds on each
host (``sleep N``, as a device on the network that answers slowly), so a rollout is
bound by its hosts' answers and a controller's slots x forks (``--forks``, every
controller's ``rollout_forks``) rather than by the cores.

Per rollout: the wall time from the rollout's creation to its end, both as stored (a
slice may begin before ``rollout start`` has returned); per controller, the CPU of its
whole process tree from before ``rollout start`` to the end (from /proc: the
controller, its wave workers, their zygotes, Ansible and its ssh; with ``--strategy
linear`` also its ssh masters, read as they are stopped after the rollout; the
start's syntax check is the first controller's), the slices and hosts it ran (its
log's "rollout N wave W slice S started hosts=H ... by=..." lines; /metrics'
``schoolfleet_rollout_slices_total{result="stored"}``), and how long its slices and
the other's ran at the same time; the hosts' sshd CPU, the whole machine's busy time
and the load average. On a machine whose cores the hosts share, the ratio says
whether the work spreads, not what a city's machines would gain.

Progress goes to stderr, a markdown record for docs/benchmarks.md to stdout. Run as
root from the repository: ``.venv/bin/python bench/rollout_replicas.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script the repository root is not on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import math
import os
import re
import shlex
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import psycopg

from bench.entry import measure
from bench.observe import machine_busy_seconds
from bench.procs import RunFailed
from bench.report import machine, revision
from bench.rollout_lab import (
    ONE_WAVE,
    PLAYBOOK,
    PLAYBOOK_NAME,
    SCHOOL,
    TASKS,
    engine_control_dirs,
    markers,
    sshd_cpu,
    stop_masters,
)
from bench.rollout_setup import register, rollout_env, write_playbooks
from bench.run import median
from bench.scale_pg import BenchPg, on_bench_server, read_stats, subtree_cpu
from controller.rollouts.runner import default_forks
from controller.stores import open_stores
from inventory.rollouts import HostOutcome, RolloutRecord
from tests.ansible_user import ansible_work_dir, ensure_ansible_user
from tests.pg_cluster import PgServer
from tests.procs import Controller, schoolctl, wait_until
from tests.ssh_hosts import SshHost, ssh_hosts

log = logging.getLogger("bench")

SETUPS = (1, 2)
_RUN_TIMEOUT = 900.0
_HELD = 'schoolfleet_lease_held{lease="rollouts"}'
_STORED = 'schoolfleet_rollout_slices_total{result="stored"}'
_LINE = re.compile(
    r"^(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ \S+ rollout (?P<rollout>\d+) "
    r"wave (?P<wave>\d+) slice (?P<slice>\d+) (?P<what>started|finished) hosts=(?P<hosts>\d+)"
    r"(?: strategy=\S+ by=(?P<by>\S+))?",
    re.M,
)


@dataclass(frozen=True, slots=True)
class SliceRun:
    """One slice as a controller's log tells it: when it started and finished there."""

    wave: int
    slice: int
    hosts: int
    by: str  # the controller's name as a claim holder
    started: float
    finished: float | None


def slice_runs(log_text: str, rollout_id: int) -> list[SliceRun]:
    """The slices of ``rollout_id`` a controller's log says it ran, in the order begun
    (a slice run again after a lost claim shows twice)."""
    begun: dict[tuple[int, int], list[tuple[int, float]]] = {}
    runs: list[SliceRun] = []
    for m in _LINE.finditer(log_text):
        if int(m["rollout"]) != rollout_id:
            continue
        key = (int(m["wave"]), int(m["slice"]))
        at = dt.datetime.strptime(m["at"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if m["what"] == "started":
            begun.setdefault(key, []).append((len(runs), at))
            runs.append(SliceRun(key[0], key[1], int(m["hosts"]), m["by"] or "", at, None))
        elif begun.get(key):
            index, _ = begun[key].pop(0)
            runs[index] = dataclasses.replace(runs[index], finished=at)
    return runs


def overlap(a: Sequence[SliceRun], b: Sequence[SliceRun]) -> float:
    """Seconds during which a slice of ``a`` and one of ``b`` ran at the same time (the
    slices of one controller, one slot each, never overlap each other)."""
    total = 0.0
    for x in a:
        for y in b:
            if x.finished is not None and y.finished is not None:
                total += max(0.0, min(x.finished, y.finished) - max(x.started, y.started))
    return total


def slice_hosts_for(hosts: int, slices: int) -> int:
    """The slice size that cuts ``hosts`` into ``slices`` slices (at most; as even as
    controller/rollouts/slices.py ``cut`` makes them)."""
    return max(1, math.ceil(hosts / max(1, slices)))


def playbook(host_seconds: float) -> str:
    """The benchmark's playbook; with ``host_seconds`` a last task that waits that long
    on each host (a device's slow answer) and changes nothing."""
    if not host_seconds:
        return PLAYBOOK
    return PLAYBOOK + (
        "    - name: The device answers slowly\n"
        f"      ansible.builtin.command: sleep {host_seconds:g}\n"
        "      changed_when: false\n"
    )


def task_count(host_seconds: float) -> int:
    """Tasks per host in the playbook ``playbook(host_seconds)``."""
    return TASKS + (1 if host_seconds else 0)


def orders(rounds: int) -> list[tuple[int, ...]]:
    """Each round's setups: one controller first, then two first, and so on."""
    return [SETUPS if n % 2 == 0 else tuple(reversed(SETUPS)) for n in range(rounds)]


@dataclass(slots=True)
class ControllerFigures:
    """One controller's part in one rollout."""

    holder: str = ""
    cpu: float = 0.0  # its process tree, core-s, over the rollout
    slices: int = 0  # slices its log says it began
    stored: float = 0.0  # /metrics: slices whose results it stored
    hosts: int = 0  # hosts of the slices it began
    slice_seconds: list[float] = field(default_factory=list)
    drove: bool = False  # held the rollouts lease: drove the rollout

    def per_host_task(self) -> float | None:
        return self.cpu / (self.hosts * TASKS) if self.hosts else None


@dataclass(slots=True)
class RoundResult:
    """One rollout, by one or two controllers."""

    round: int
    replicas: int
    hosts: int
    slice_hosts: int
    seconds: float
    start_seconds: float
    hosts_ok: int
    markers: int
    controllers: list[ControllerFigures]
    # Seconds both controllers had a slice running at once (two controllers only).
    together: float
    # From the rollout's creation to the first slice's start, and from the last
    # slice's end to the rollout's end as stored (the driver closing the wave).
    first_slice: float | None
    tail: float | None
    sshd_cpu: float
    busy_cpu: float
    busy_seconds: float
    load_before: float
    load_after: float
    state: str = ""
    error: str = ""
    tasks: int = TASKS  # tasks per host in the playbook

    @property
    def controller_cpu(self) -> float:
        return sum(c.cpu for c in self.controllers)

    @property
    def other_cpu(self) -> float:
        return self.busy_cpu - self.controller_cpu - self.sshd_cpu


@dataclass
class Lab:
    """The hosts, the playbooks, and the registered database every round copies."""

    work: Path
    hosts: list[SshHost]
    playbooks: Path
    copies: PgServer
    token: str


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="bench/rollout_replicas.py", description=__doc__.split("\n\n")[0].replace("\n", " ")
    )
    p.add_argument("--hosts", type=int, default=32, help="SSH hosts (32)")
    p.add_argument("--rounds", type=int, default=4, help="rounds of one and two controllers (4)")
    p.add_argument(
        "--slice-hosts", type=int, default=0, help="rollout_slice_hosts (0: a quarter of --hosts)"
    )
    p.add_argument("--strategy", choices=("mitogen", "linear"), default="mitogen")
    p.add_argument(
        "--host-seconds",
        type=float,
        default=0.0,
        help="a third task waits this long on each host: `sleep N` (0: none)",
    )
    p.add_argument(
        "--forks", type=int, default=0, help="every controller's rollout_forks (0: its default)"
    )
    p.add_argument("--pg-fast", action="store_true", help="fsync etc. off, as in the tests")
    p.add_argument("--json", type=Path, help="write every round's figures to this file")
    args = p.parse_args(argv)
    if args.hosts < 2 or args.rounds < 1 or min(args.slice_hosts, args.forks) < 0:
        p.error(
            "--hosts must be at least 2, --rounds at least 1, "
            "--slice-hosts and --forks not negative"
        )
    if args.host_seconds < 0:
        p.error("--host-seconds must not be negative")
    args.slice_hosts = args.slice_hosts or slice_hosts_for(args.hosts, 4)
    return args


@contextlib.contextmanager
def open_lab(count: int, pg: BenchPg, host_seconds: float = 0.0) -> Iterator[Lab]:
    """Starts the hosts, registers them with a controller on a fresh database, and
    keeps that database as the rounds' template; removes it all after."""
    with contextlib.ExitStack() as stack:
        # Short, in /tmp: ssh's control sockets live under it.
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sf-rr-", dir="/tmp")))
        # Ansible runs as its own OS user, as in production: it reads the playbooks.
        ensure_ansible_user()
        work.chmod(0o755)
        playbooks = write_playbooks(work)
        (playbooks / PLAYBOOK_NAME).write_text(playbook(host_seconds))
        log.info("starting %d ssh hosts", count)
        hosts = stack.enter_context(ssh_hosts(count))
        url = pg.fresh_database()
        ansible_dir = stack.enter_context(ansible_work_dir())
        first = Controller(
            work / "register",
            host=hosts[0].gateway,
            env=rollout_env(playbooks, ansible_dir, hosts[0]),
            database_url=url,
        )
        first.workdir.mkdir()
        stack.callback(first.stop)
        first.start()
        register(work, first, hosts, stack)
        first.stop()
        name = str(psycopg.conninfo.conninfo_to_dict(url)["dbname"])
        copies = PgServer(pg.server.admin_url, pg.cluster.url, name)
        yield Lab(work, hosts, playbooks, copies, first.admin_token)


def run_setup(lab: Lab, args: argparse.Namespace, round_no: int, replicas: int) -> RoundResult:
    """One rollout on every host by ``replicas`` fresh controllers on a fresh copy of
    the registered database."""
    url = lab.copies.fresh_database()
    try:
        with contextlib.ExitStack() as stack:
            controllers, ansible_dirs = [], []
            for n in range(1, replicas + 1):
                ansible_dir = stack.enter_context(ansible_work_dir())
                ansible_dirs.append(ansible_dir)
                env = rollout_env(lab.playbooks, ansible_dir, lab.hosts[0])
                env |= {
                    "SCHOOLFLEET_CONTROLLER_ROLLOUT_SLICE_HOSTS": str(args.slice_hosts),
                    "SCHOOLFLEET_CONTROLLER_ROLLOUT_SLOTS": "1",
                }
                if args.forks:
                    env["SCHOOLFLEET_CONTROLLER_ROLLOUT_FORKS"] = str(args.forks)
                c = Controller(
                    lab.work / f"round{round_no}-{replicas}-c{n}",
                    env=env,
                    database_url=url,
                    admin_token=lab.token,
                )
                c.workdir.mkdir()
                stack.callback(c.stop)
                controllers.append(c.start())
            wait_until(
                lambda: any(c.metrics().get(_HELD) for c in controllers),
                60,
                "a controller driving rollouts",
                step=0.5,
            )
            return _measure(lab, args, round_no, controllers, ansible_dirs, url)
    finally:
        lab.copies.drop(url)


def _measure(
    lab: Lab,
    args: argparse.Namespace,
    round_no: int,
    controllers: list[Controller],
    ansible_dirs: list[Path],
    url: str,
) -> RoundResult:
    drove = [bool(c.metrics().get(_HELD)) for c in controllers]
    marker = f"r{round_no}-{len(controllers)}-{time.time_ns()}"
    load_before = os.getloadavg()[0]
    options = [*ONE_WAVE.options, "--strategy", args.strategy]
    pids = [_pid(c) for c in controllers]
    # From before the start: a slice may begin before `rollout start` has returned.
    stats = read_stats()
    cpu0 = [subtree_cpu(pid, stats) for pid in pids]
    busy0, sshd0, window = machine_busy_seconds(), sshd_cpu(lab.hosts), time.monotonic()
    asked = time.monotonic()
    started = schoolctl(
        controllers[0].address,
        *("rollout", "start", PLAYBOOK_NAME, "--select", f"school={SCHOOL}", *options),
        *("--extra-vars", json.dumps({"marker": marker}), "--json"),
        timeout=120,
    )
    begun = time.monotonic()
    if started.code != 0:
        raise RunFailed(f"schoolctl rollout start: exit {started.code}: {started.err.strip()}")
    rollout_id = int(started.json()["rollout_id"])
    record = _wait_ended(url, rollout_id, begun)
    stats = read_stats()
    cpu1 = [subtree_cpu(pid, stats) for pid in pids]
    # With Mitogen each slice closes its hosts' connections as it ends. With linear the
    # ssh masters (ControlPersist) outlive it, re-parented away from the controller:
    # their CPU is read as they are stopped and counted as their controller's.
    for n, ansible_dir in enumerate(ansible_dirs):
        for control_dir in engine_control_dirs(ansible_dir, rollout_id):
            cpu1[n] += stop_masters(control_dir)[0]
    # The sessions' CPU is in their sshd's children's times once they have ended.
    wait_until(lambda: not any(h.session_pids() for h in lab.hosts), 30, "ssh sessions to end")
    busy, sshd = machine_busy_seconds() - busy0, sshd_cpu(lab.hosts) - sshd0
    busy_seconds = time.monotonic() - window
    figures = []
    for c, before, after, held in zip(controllers, cpu0, cpu1, drove, strict=True):
        runs = slice_runs(c.log_text(), rollout_id)
        figures.append(
            ControllerFigures(
                holder=runs[0].by if runs else "",
                cpu=after - before,
                slices=len(runs),
                stored=c.metrics().get(_STORED, 0.0),
                hosts=sum(r.hosts for r in runs),
                slice_seconds=[r.finished - r.started for r in runs if r.finished is not None],
                drove=held,
            )
        )
    logs = [slice_runs(c.log_text(), rollout_id) for c in controllers]
    every = [run for runs in logs for run in runs]
    ends = [run.finished for run in every if run.finished is not None]
    finished = record.finished_at
    counts = record.counts
    state = record.state.value
    error = "" if state == "done" else f"rollout {rollout_id} {state}: {record.reason}"
    return RoundResult(
        round=round_no,
        replicas=len(controllers),
        hosts=len(lab.hosts),
        slice_hosts=args.slice_hosts,
        seconds=(finished or time.time()) - record.created_at,
        start_seconds=begun - asked,
        hosts_ok=counts.get(HostOutcome.OK, 0) + counts.get(HostOutcome.CHANGED, 0),
        markers=markers(lab.hosts, marker),
        controllers=figures,
        together=overlap(logs[0], logs[1]) if len(logs) == 2 else 0.0,
        first_slice=min(r.started for r in every) - record.created_at if every else None,
        tail=finished - max(ends) if finished and ends else None,
        sshd_cpu=sshd,
        busy_cpu=busy,
        busy_seconds=busy_seconds,
        load_before=load_before,
        load_after=os.getloadavg()[0],
        state=state,
        error=error,
        tasks=task_count(args.host_seconds),
    )


def _pid(controller: Controller) -> int:
    assert controller.proc is not None
    return controller.proc.pid


def _wait_ended(url: str, rollout_id: int, begun: float) -> RolloutRecord:
    """The rollout once it has ended, read from the store by this process (asking a
    controller would cost it CPU the figures count)."""
    stores = open_stores(url)
    try:
        while time.monotonic() - begun < _RUN_TIMEOUT:
            record = stores.rollouts.get_rollout(rollout_id)
            if record is not None and record.state.final:
                return record
            time.sleep(0.5)
    finally:
        stores.close()
    raise RunFailed(f"rollout {rollout_id} did not end in {_RUN_TIMEOUT:g}s")


def benchmark(args: argparse.Namespace, pg: BenchPg) -> list[RoundResult]:
    """The lab once, then every round's setups in its order."""
    results: list[RoundResult] = []
    with open_lab(args.hosts, pg, args.host_seconds) as lab:
        for index, order in enumerate(orders(args.rounds), 1):
            for replicas in order:
                log.info("round %d: %d controller(s)", index, replicas)
                result = run_setup(lab, args, index, replicas)
                log.info(
                    "round %d, %d controller(s): %.1f s, %d/%d ok, %d markers; controllers "
                    "%s core-s, slices %s, hosts %s; together %.1f s; sshd %.1f core-s, "
                    "load %.1f%s",
                    index,
                    replicas,
                    result.seconds,
                    result.hosts_ok,
                    result.hosts,
                    result.markers,
                    " / ".join(f"{c.cpu:.1f}" for c in result.controllers),
                    " / ".join(str(c.slices) for c in result.controllers),
                    " / ".join(str(c.hosts) for c in result.controllers),
                    result.together,
                    result.sshd_cpu,
                    result.load_before,
                    f"; {result.error}" if result.error else "",
                )
                results.append(result)
    return results


def of(results: Sequence[RoundResult], replicas: int) -> list[RoundResult]:
    return [r for r in results if r.replicas == replicas]


def speedups(results: Sequence[RoundResult]) -> list[float]:
    """Per round: one controller's wall time over two controllers', both in that round."""
    ones = {r.round: r.seconds for r in of(results, 1)}
    return [ones[r.round] / r.seconds for r in of(results, 2) if r.round in ones and r.seconds]


def _n(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def cell(values: Sequence[float | None], digits: int = 1) -> str:
    """The median in bold, each round's value in brackets."""
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    each = " / ".join(_n(v, digits) for v in values)
    return f"**{_n(median(known), digits)}** ({each})" if len(values) > 1 else _n(known[0], digits)


def split(results: Sequence[RoundResult], pick: str, digits: int = 1) -> str:
    """Per round, each controller's figure: ``a / b`` (the driving controller first)."""

    def one(r: RoundResult) -> str:
        ordered = sorted(r.controllers, key=lambda c: not c.drove)
        return " / ".join(_n(float(getattr(c, pick)), digits) for c in ordered)

    return "; ".join(one(r) for r in results) or "-"


def _per_host_task(r: RoundResult) -> float:
    return r.controller_cpu / (r.hosts * r.tasks)


def _slice_seconds(r: RoundResult) -> float | None:
    seconds = [s for c in r.controllers for s in c.slice_seconds]
    return median(seconds) if seconds else None


def _slice_cpu(r: RoundResult) -> float | None:
    slices = sum(c.slices for c in r.controllers)
    return r.controller_cpu / slices if slices else None


def _together(r: RoundResult) -> float | None:
    return r.together if r.replicas > 1 else None


Pick = Callable[[RoundResult], float | None]
ROWS: list[tuple[str, Pick, int]] = [
    ("**wall time, s** (the rollout's creation to its end, as stored)", lambda r: r.seconds, 1),
    ("`rollout start` (syntax check included), s", lambda r: r.start_seconds, 1),
    ("from the rollout's creation to the first slice's start, s", lambda r: r.first_slice, 2),
    ("from the last slice's end to the rollout's end, s", lambda r: r.tail, 2),
    ("hosts ok or changed (the rollout's outcomes)", lambda r: r.hosts_ok, 0),
    ("hosts whose marker holds the round's value", lambda r: r.markers, 0),
    ("**controllers' CPU, core-s** (their process trees)", lambda r: r.controller_cpu, 1),
    ("controllers' core-s per host-task", _per_host_task, 3),
    ("controllers' core-s per slice", _slice_cpu, 2),
    ("a slice's wall time, s (median of the round's slices)", _slice_seconds, 1),
    ("**both controllers running a slice at once, s**", _together, 1),
    ("host side (sshd and under), core-s", lambda r: r.sshd_cpu, 1),
    ("machine busy, cores (the rollout's window)", lambda r: r.busy_cpu / r.busy_seconds, 2),
    ("everything else on the machine, core-s", lambda r: r.other_cpu, 1),
    ("load average (1 min) before the rollout", lambda r: r.load_before, 2),
]  # fmt: skip
SPLIT_ROWS = [
    ("core-s", "cpu", 1),
    ("slices begun (its log)", "slices", 0),
    ("slices stored (/metrics)", "stored", 0),
    ("hosts in its slices", "hosts", 0),
]


def solved(ones: Sequence[RoundResult], twos: Sequence[RoundResult]) -> str:
    """The controllers' CPU as ``k`` per controller taking part plus ``h`` per host-task,
    from the medians of the two setups (the same hosts and slices in both)."""
    one = median([r.controller_cpu for r in ones])
    per_controller = median([r.controller_cpu for r in twos]) - one
    host_tasks = ones[0].hosts * ones[0].tasks
    per_host_task = (one - per_controller) / host_tasks
    return (
        f"- Solved from the medians, controllers' CPU = k x controllers + h x host-tasks: "
        f"**k = {per_controller:.1f} core-s per controller taking part** (its wave worker, "
        f"zygote and multiplexers started, its share of the slices' start-up), **h = "
        f"{per_host_task:.3f} core-s per host-task** ({host_tasks} host-tasks)."
    )


def record(
    args: argparse.Namespace,
    argv: list[str],
    results: Sequence[RoundResult],
    context: dict[str, str],
) -> str:
    """The markdown record for docs/benchmarks.md."""
    cmd = shlex.join([".venv/bin/python", "bench/rollout_replicas.py", *argv])
    slices = math.ceil(args.hosts / args.slice_hosts)
    lines = [
        f"Machine: {machine().line()} PostgreSQL {context['pg_version']} (a throwaway "
        f"cluster on this machine's disk{', fsync off' if args.pg_fast else ''}). Load "
        f"average (1 min) {context['load_before']} before, {context['load_after']} after.",
        "",
        f"Code at `{revision()}`; every controller `rollout_slots=1`, "
        f"`rollout_slice_hosts={args.slice_hosts}`, forks {args.forks or default_forks()}, "
        f"strategy {args.strategy}; rollout `{' '.join(ONE_WAVE.options)}`"
        + (
            f"; the playbook's last task waits {args.host_seconds:g} s on each host (`sleep`)."
            if args.host_seconds
            else "."
        ),
        "",
        f"Command (took {context['minutes']} min): `{cmd}`",
        "",
        f"{args.hosts} hosts, {task_count(args.host_seconds)} tasks, one wave cut into "
        f"{slices} slices; "
        f"{args.rounds} round(s), each the same rollout by one controller and by two on a "
        "fresh copy of the registered database, fresh controllers, the order alternating. "
        "Medians in bold, each round's figure in brackets.",
        "",
        "| figure | one controller | two controllers |",
        "|---|---|---|",
    ]
    for name, pick, digits in ROWS:
        lines.append(
            f"| {name} | {cell([pick(r) for r in of(results, 1)], digits)} | "
            f"{cell([pick(r) for r in of(results, 2)], digits)} |"
        )
    for name, attr, digits in SPLIT_ROWS:
        lines.append(
            f"| per controller, the driver first: {name} | {split(of(results, 1), attr, digits)} "
            f"| {split(of(results, 2), attr, digits)} |"
        )
    ratios = speedups(results)
    if ratios:
        ones, twos = of(results, 1), of(results, 2)
        of_medians = median([r.seconds for r in ones]) / median([r.seconds for r in twos])
        cpu = median([r.controller_cpu for r in twos]) / median([r.controller_cpu for r in ones])
        lines += [
            "",
            f"- **one controller's wall time / two controllers': {median(ratios):.2f}** "
            f"(per round: {', '.join(f'{x:.2f}' for x in ratios)}; ratio of the medians "
            f"{of_medians:.2f}); the controllers' CPU, two against one: {cpu:.2f}.",
            solved(ones, twos),
        ]
    errors = [f"round {r.round}, {r.replicas} controller(s): {r.error}" for r in results if r.error]
    if errors:
        lines += ["", "Errors:", "", *[f"- {e}" for e in errors]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; prints the record."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    # The migration lines of the template's database are not progress.
    logging.getLogger("controller").setLevel(logging.WARNING)
    ran = measure(
        lambda: on_bench_server(not args.pg_fast, lambda pg: benchmark(args, pg)),
        (RunFailed, AssertionError),
        needs_root=True,
    )
    if isinstance(ran, int):
        return ran
    results, context = ran.value
    if args.json is not None:
        args.json.write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=1))
    sys.stdout.write(record(args, argv, results, context))
    return 0


if __name__ == "__main__":
    sys.exit(main())
