"""Rollout benchmark: a two-task playbook on ``--hosts`` SSH hosts, seven ways.

The hosts are real sshd in network namespaces (tests/ssh_hosts.py), registered with a
real controller by their agents, which then stop. In each of ``--runs`` runs, in an order
that rotates from run to run (to spread the machine's drift):

- plain ``ansible-playbook`` with Ansible's defaults: forks 5, no pipelining, Ansible's
  default ssh arguments (ControlPersist 60 s), facts gathered (gathering=implicit; the
  playbook does not say gather_facts), Python discovered; host keys are still checked
  against the hosts' known_hosts and the run's key used, through inventory variables;
  an empty ANSIBLE_CONFIG and a fresh ANSIBLE_HOME;
- plain ``ansible-playbook`` with the engine's settings: the environment
  ``controller.rollouts.runner.ansible_env`` gives for the RunnerSettings the controller
  builds by default (forks ``default_forks()``, pipelining, ControlPersist, gathering
  explicit);
- the engine, one wave of every host (``schoolctl rollout start --canary 100%
  --wave-size 100%``), timed from ``rollout start`` returning to the rollout's end as
  the controller stored it (its log is watched for the end, which costs the
  controller nothing);
- the engine in waves (``--canary 1 --wave-size 10%``, the defaults);
- the last three with Ansible's strategy ``linear`` and again with Mitogen for Ansible
  (strategy ``mitogen_linear``, the engine's default): plain ``ansible-playbook`` with
  the engine's settings and ``RunnerSettings(strategy=...)``, and the engine with
  ``rollout start --strategy ...``.

The engine's variants pass ``--include-offline``: the agents stop once the hosts are
registered. Every run starts cold: the ssh masters a run leaves are stopped before the next.

CPU: the controller side is ansible-playbook and everything under it (wait4's rusage;
for the engine the controller's whole process tree from /proc, its wave workers kept
alive between slices included) plus the ssh masters (read before they stop: nobody
waits for them); the host side is every sshd's own and its children's times once
their sessions have ended.

Progress goes to stderr; a markdown block for docs/benchmarks.md goes to stdout.
Run as root from the repository: ``.venv/bin/python bench/rollout.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script (``python bench/rollout.py``) the repository root is not on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import shlex
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from importlib.metadata import version

from bench.entry import measure
from bench.procs import RunFailed
from bench.report import machine
from bench.rollout_lab import (
    ONE_WAVE,
    ONE_WAVE_MITOGEN,
    PLAIN_DEFAULTS,
    PLAIN_ENGINE,
    PLAIN_MITOGEN,
    PLAYBOOK_NAME,
    TASKS,
    VARIANTS,
    WAVES,
    WAVES_MITOGEN,
    Lab,
    RunResult,
    Variant,
    run_variant,
)
from bench.rollout_setup import register, rollout_env, write_playbooks
from bench.run import median
from controller.rollouts.runner import default_forks
from tests.ansible_user import ansible_work_dir, ensure_ansible_user
from tests.procs import Controller
from tests.ssh_hosts import ssh_hosts

log = logging.getLogger("bench")

AIM_OVERHEAD = 1.05
AIM_SPEEDUP = 2.5
AIM_WAVES_CPU = 1.2  # twelve waves' controller CPU against one wave's
AIM_CPU_SHARE = 0.5  # the engine's controller CPU per host-task against plain Ansible's
CITY_PANELS = 22_000
Pick = Callable[[RunResult], float | None]


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="bench/rollout.py",
        description="A two-task playbook on SSH hosts in namespaces: plain ansible-playbook "
        "(Ansible's defaults, the engine's settings) against the rollout engine.",
    )
    p.add_argument("--hosts", type=int, default=50, help="SSH hosts (50)")
    p.add_argument("--runs", type=int, default=3, help="runs of every variant (3)")
    p.add_argument(
        "--only",
        action="append",
        choices=[v.key for v in VARIANTS],
        help="run only these variants (repeatable; figures from such runs lack ratios)",
    )
    p.add_argument("--json", type=Path, help="write every run's figures to this file")
    args = p.parse_args(argv)
    if args.hosts < 1 or args.runs < 1:
        p.error("--hosts and --runs must be at least 1")
    return args


def _n(value: float | None, digits: int = 1) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def _of(results: Sequence[RunResult], variant: Variant) -> list[RunResult]:
    return [r for r in results if r.variant == variant.key]


def _cell(runs: Sequence[RunResult], pick: Pick, digits: int = 1) -> str:
    values = [pick(r) for r in runs]
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    med = median(known)
    if len(values) == 1:
        return _n(med, digits)
    return f"**{_n(med, digits)}** ({' / '.join(_n(v, digits) for v in values)})"


def _between(r: RunResult) -> float | None:
    return None if r.waves_seconds is None else r.seconds - r.waves_seconds


ROWS: list[tuple[str, Pick, int]] = [
    ("**wall time, s**", lambda r: r.seconds, 1),
    ("hosts ok or changed (Ansible's recap; engine: outcomes)", lambda r: r.hosts_ok, 0),
    ("hosts whose marker holds the run's value", lambda r: r.markers, 0),
    ("forks", lambda r: r.forks, 0),
    ("engine: waves", lambda r: r.waves if r.waves_seconds is not None else None, 0),
    ("engine: the waves' durations, summed, s", lambda r: r.waves_seconds, 1),
    ("engine: wall time less the waves, s", _between, 1),
    ("engine: `rollout start` (syntax check included), s", lambda r: r.start_seconds, 1),
    ("**controller side CPU, core-s**", lambda r: r.controller_cpu, 1),
    ("of which ssh masters, core-s", lambda r: r.masters_cpu, 1),
    ("ssh masters left running (stopped after the run)", lambda r: r.masters, 0),
    ("**controller core-s per host-task**", lambda r: r.per_host_task(r.controller_cpu), 3),
    ("host side (sshd and under), core-s", lambda r: r.sshd_cpu, 1),
    ("host side core-s per host-task", lambda r: r.per_host_task(r.sshd_cpu), 3),
    ("everything else (clean-up, noise), core-s", lambda r: r.other_cpu, 1),
    ("machine busy, cores (the run and its clean-up)", lambda r: r.busy_cpu / r.busy_seconds, 2),
]  # fmt: skip


def _wall(r: RunResult) -> float:
    return r.seconds


def _controller(r: RunResult) -> float:
    return r.controller_cpu


def _both(r: RunResult) -> float:
    return r.controller_cpu + r.sshd_cpu


def _ratios(
    results: Sequence[RunResult], top: Variant, bottom: Variant, pick: Callable[[RunResult], float]
) -> list[float]:
    """Per run: ``top``'s figure over ``bottom``'s, both measured in the same run."""
    tops = {r.run: pick(r) for r in _of(results, top)}
    return [tops[r.run] / pick(r) for r in _of(results, bottom) if r.run in tops and pick(r)]


def _ratio_line(results: Sequence[RunResult], top: Variant, bottom: Variant, aim: str) -> str:
    ratios = _ratios(results, top, bottom, _wall)
    if not ratios:
        return ""
    of_medians = median([r.seconds for r in _of(results, top)]) / median(
        [r.seconds for r in _of(results, bottom)]
    )
    cpu = {
        label: median(_ratios(results, top, bottom, pick))
        for label, pick in (("controller side", _controller), ("both sides", _both))
    }
    return (
        f"- **{top.label} / {bottom.label}: {median(ratios):.2f}** (per run: "
        f"{', '.join(f'{x:.2f}' for x in ratios)}; ratio of the medians {of_medians:.2f}); "
        f"{aim}. CPU, median of the per-run ratios: controller side "
        f"{cpu['controller side']:.2f}, both sides {cpu['both sides']:.2f}."
    )


def _versions() -> str:
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True, check=False, timeout=10)
    return (
        f"ansible-core {version('ansible-core')}, ansible-runner {version('ansible-runner')}, "
        f"mitogen {version('mitogen')}, "
        f"{(ssh.stderr or ssh.stdout).strip()}"
    )


def record(argv: list[str], results: Sequence[RunResult], minutes: float) -> str:
    """The markdown block for docs/benchmarks.md."""
    ran = [v for v in VARIANTS if _of(results, v)]
    cmd = shlex.join([".venv/bin/python", "bench/rollout.py", *argv])
    hosts = results[0].hosts if results else 0
    runs = max((r.run for r in results), default=0)
    lines = [
        f"Machine: {machine().line()} {_versions()}.",
        "",
        f"Command (took {minutes:.1f} min): `{cmd}`",
        "",
        f"{hosts} hosts, {TASKS} tasks; {runs} run(s), each variant once per run, in an order "
        "rotating from run to run; every variant starts cold (ssh masters stopped in between). "
        "Medians in bold, each run's figure in brackets (run 1 / run 2 / ...).",
        "",
        "Ansible's defaults: forks 5, no pipelining, ssh arguments `-C -o ControlMaster=auto "
        "-o ControlPersist=60s`, facts gathered (gathering=implicit), Python discovered; host "
        "keys checked and the run's key used through inventory variables. The engine's "
        "settings: `controller.rollouts.runner.ansible_env` for the controller's default "
        f"RunnerSettings (forks {default_forks()}, pipelining, ControlPersist 60 s, "
        "gathering=explicit); Mitogen variants: the same with strategy mitogen_linear. "
        "Engine options: one wave `"
        + " ".join(ONE_WAVE.options)
        + "`; in waves `"
        + " ".join(WAVES.options)
        + "`.",
        "",
        "| figure | " + " | ".join(v.label for v in ran) + " |",
        "|---|" + "---|" * len(ran),
    ]
    for name, pick, digits in ROWS:
        lines.append(f"| {name} | " + " | ".join(_cell(_of(results, v), pick, digits) for v in ran))
        lines[-1] += " |"
    wall, cpu = _wall, _controller
    aims = [
        _ratio_line(results, ONE_WAVE, PLAIN_ENGINE, _aim(results, ONE_WAVE, PLAIN_ENGINE, wall)),
        _ratio_line(
            results, PLAIN_DEFAULTS, ONE_WAVE, _aim(results, PLAIN_DEFAULTS, ONE_WAVE, wall)
        ),
        _ratio_line(
            results,
            PLAIN_DEFAULTS,
            ONE_WAVE_MITOGEN,
            _aim(results, PLAIN_DEFAULTS, ONE_WAVE_MITOGEN, wall),
        ),
        _ratio_line(results, PLAIN_DEFAULTS, PLAIN_ENGINE, "the settings alone"),
        _ratio_line(results, PLAIN_ENGINE, PLAIN_MITOGEN, "Mitogen alone"),
        _ratio_line(
            results,
            WAVES,
            ONE_WAVE,
            "what the waves cost; by controller CPU "
            + _aim(results, WAVES, ONE_WAVE, cpu, AIM_WAVES_CPU, at_least=False),
        ),
        _ratio_line(
            results,
            WAVES_MITOGEN,
            ONE_WAVE_MITOGEN,
            "what the waves cost with Mitogen; by controller CPU "
            + _aim(results, WAVES_MITOGEN, ONE_WAVE_MITOGEN, cpu, AIM_WAVES_CPU, at_least=False),
        ),
        *[_cpu_share(results, engine, PLAIN_DEFAULTS) for engine in (ONE_WAVE, ONE_WAVE_MITOGEN)],
    ]
    lines += ["", *[a for a in aims if a]]
    lines += ["", *_city(results)]
    errors = [f"run {r.run} {r.variant}: {r.error}" for r in results if r.error]
    if errors:
        lines += ["", "Errors:", "", *[f"- {e}" for e in errors]]
    return "\n".join(lines) + "\n"


def _aim(
    results: Sequence[RunResult],
    top: Variant,
    bottom: Variant,
    pick: Callable[[RunResult], float],
    aim: float | None = None,
    at_least: bool | None = None,
) -> str:
    """ "aim ...: met/missed" for ``top``/``bottom`` by the median of the per-run ratios;
    by default the wall-time aims: at most 1.05 against the same settings, else at least
    2.5."""
    if aim is None:
        aim, at_least = (AIM_OVERHEAD, False) if bottom is PLAIN_ENGINE else (AIM_SPEEDUP, True)
    ratios = _ratios(results, top, bottom, pick)
    sign = "≥" if at_least else "≤"
    if not ratios:
        return f"aim {sign} {aim}: -"

    def ok(r: float) -> bool:
        return r >= aim if at_least else r <= aim

    verdict = "**met**" if ok(median(ratios)) else "**missed**"
    each = [ok(r) for r in ratios]
    if any(each) and not all(each):
        verdict += f" on the median only: the runs span {min(ratios):.2f}-{max(ratios):.2f}"
    return f"aim {sign} {aim}: {verdict}"


def _cpu_share(results: Sequence[RunResult], engine: Variant, plain: Variant) -> str:
    """The engine's controller CPU per host-task as a share of plain Ansible's."""
    ratios = _ratios(results, engine, plain, _controller)
    if not ratios:
        return ""
    return (
        f"- **{engine.label}: controller CPU per host-task / {plain.label}'s: "
        f"{median(ratios):.2f}** (per run: {', '.join(f'{x:.2f}' for x in ratios)}); "
        + _aim(results, engine, plain, _controller, AIM_CPU_SHARE, at_least=False)
        + "."
    )


def _city(results: Sequence[RunResult]) -> list[str]:
    """What one controller core does per host-task, and a city's rollout on that basis."""
    lines = []
    for variant in (PLAIN_ENGINE, ONE_WAVE, ONE_WAVE_MITOGEN):
        runs = _of(results, variant)
        if not runs:
            continue
        per = median([r.per_host_task(r.controller_cpu) for r in runs])
        hours = CITY_PANELS * TASKS * per / 3600
        lines.append(
            f"- {variant.label}: **{per:.3f} controller core-s per host-task** "
            f"({1 / per:.1f} host-tasks per core-second); {CITY_PANELS:,} panels x {TASKS} "
            f"tasks = {hours:.1f} core-hours, i.e. {hours / 2:.1f} h on 2 controller cores "
            f"and {hours / 8:.1f} h on 8, if nothing else limits it."
        )
    return lines


@contextlib.contextmanager
def open_lab(count: int) -> Iterator[Lab]:
    """Starts the hosts and the controller, registers every host; removes it all after."""
    with contextlib.ExitStack() as stack:
        # Short, in /tmp: ssh's control sockets live under it.
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sf-rb-", dir="/tmp")))
        # Ansible runs as its own OS user, as in production: it reads the playbooks.
        ensure_ansible_user()
        ansible_dir = stack.enter_context(ansible_work_dir())
        work.chmod(0o755)
        playbooks = write_playbooks(work)
        log.info("starting %d ssh hosts", count)
        hosts = stack.enter_context(ssh_hosts(count))
        controller = Controller(
            work,
            host=hosts[0].gateway,
            env={
                "SCHOOLFLEET_CONTROLLER_DATA_DIR": str(work / "data"),
                **rollout_env(playbooks, ansible_dir, hosts[0]),
            },
        )
        stack.callback(controller.stop)
        controller.start()
        register(work, controller, hosts, stack)
        yield Lab(work, hosts, controller, playbooks / PLAYBOOK_NAME, ansible_dir)


def benchmark(args: argparse.Namespace) -> list[RunResult]:
    """Sets the hosts up once, then every run, every variant."""
    variants = [v for v in VARIANTS if not args.only or v.key in args.only]
    results: list[RunResult] = []
    with open_lab(args.hosts) as lab:
        for run in range(1, args.runs + 1):
            shift = (run - 1) % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                log.info("run %d: %s", run, variant.label)
                result = run_variant(lab, variant, run)
                log.info(
                    "run %d %s: %.1f s, %d/%d ok, %d markers, controller %.1f core-s "
                    "(masters %.1f), sshd %.1f core-s, other %.1f%s",
                    run,
                    variant.key,
                    result.seconds,
                    result.hosts_ok,
                    result.hosts,
                    result.markers,
                    result.controller_cpu,
                    result.masters_cpu,
                    result.sshd_cpu,
                    result.other_cpu,
                    f"; {result.error}" if result.error else "",
                )
                results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; prints the record."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    ran = measure(lambda: benchmark(args), (RunFailed, AssertionError), needs_root=True)
    if isinstance(ran, int):
        return ran
    results = ran.value
    if args.json is not None:
        args.json.write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=1))
    sys.stdout.write(record(argv, results, ran.minutes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
