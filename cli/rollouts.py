"""schoolctl rollout: run a playbook on devices in waves, follow it, pause, abort or
retry it.

Flags are checked here before anything is sent; a bad one is a RequestRefused, one line
and exit 2, like the controller's own refusals."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Annotated

import typer

from cli import completion
from cli import render_rollouts as render
from cli.client.rollout_values import RolloutInfo, RolloutRequest
from cli.errors import ControllerUnreachable, RequestRefused
from cli.extra_vars import parse_extra_vars
from cli.groups import command_group
from cli.options import JsonFlag, client, err, out, print_json
from inventory.rollouts import (
    STRATEGIES,
    HostOutcome,
    RolloutInputError,
    RolloutState,
    parse_amount,
    parse_percent,
    parse_selector,
)

if TYPE_CHECKING:
    from cli.client.admin import AdminClient

_RULES = (
    "The selector is key=value parts joined by commas; every part must match, and '|' "
    "separates alternatives of one key: school=1234,kind=panel|laptop,label.grade=5. "
    "Keys: school, room, device (ids), kind (panel, monoblock, laptop, server), os (the "
    "OS version a device reports), label.NAME (a device label).\n\n"
    "Waves: the canary first (--canary), then each wave twice the one before, up to "
    "--wave-size.\n\n"
    "--max-fail is a budget for the whole rollout: its failed and unreachable hosts, "
    "as a share of all its hosts, may reach it but not pass it (5% of 60 hosts: 3 may "
    "fail, the 4th halts). It is checked at every wave: a wave after which the budget is "
    "passed halts the rollout, and a wave that would certainly pass it (hosts with no "
    "known address) does not start. The hosts not yet reached are left as they were; "
    "rollout status shows the budget left.\n\n"
    "The school day comes first: devices in a room with a lesson scheduled are not "
    "changed until it is over, and a school with maintenance windows (schoolctl "
    "maintenance set) has its devices changed only inside them."
)

rollout_app = command_group(
    "Run a playbook on devices in waves, follow it, pause, abort or retry it.\n\n"
    + _RULES
    + "\n\nExit codes: 0 ok; 1 the rollout halted or was aborted, or ended with failed "
    "hosts (status); 2 a bad selector, amount, extra vars or option, refused before "
    "anything is sent, or refused by the controller; 3 no controller; 4 no such rollout "
    "(or host of it); 5 not possible in the rollout's state (pause a finished one, a host "
    "already in another); 6 not allowed; 7 the rollout ended with hosts not reached "
    "(done-unreached, and none failed: status)."
)

# Polls in a row that may find no controller before --watch gives up.
_WATCH_MISSES = 5
RolloutId = Annotated[
    int,
    typer.Argument(
        metavar="ID",
        help="The rollout's number (rollout list).",
        min=1,
        autocompletion=completion.rollouts,
    ),
]


# rollout status: the rollout ended with hosts not reached (and none failed).
EXIT_UNREACHED = 7


def exit_code(info: RolloutInfo) -> int:
    """What ``rollout status`` exits with: 1 if the rollout halted or was aborted, or
    has failed hosts; 7 if it ended with hosts not reached; else 0 (done, or still
    going without --watch)."""
    if info.state in (RolloutState.HALTED, RolloutState.ABORTED):
        return 1
    if info.counts.get(HostOutcome.FAILED.value, 0):
        return 1
    return EXIT_UNREACHED if info.state == RolloutState.DONE_UNREACHED else 0


def _show_started(info: RolloutInfo, as_json: bool) -> None:
    if as_json:
        print_json(render.rollout_json(info))
    else:
        for line in render.started_lines(info):
            out.print(line)


_START_HELP = (
    "Run a playbook on the devices a selector names, in waves.\n\n"
    + _RULES
    + "\n\nEverything is checked before anything runs: the selector, amounts and extra "
    "vars here (exit 2, nothing sent), then the playbook and hosts by the controller. "
    "Prints the rollout's number, its hosts and the waves planned; --dry-run only checks."
)


@rollout_app.command("start", help=_START_HELP)
def rollout_start(
    playbook: Annotated[
        str,
        typer.Argument(
            metavar="PLAYBOOK",
            help="A playbook in the controller's folder, e.g. timesync.yml.",
            autocompletion=completion.playbooks,
        ),
    ],
    select: Annotated[
        str,
        typer.Option(
            "--select",
            metavar="SELECTOR",
            help="Which devices: school=1234,kind=panel|laptop (see above).",
        ),
    ],
    canary: Annotated[
        str, typer.Option(metavar="N|P%", help="The first wave: a number of hosts, or a share.")
    ] = "1",
    wave_size: Annotated[
        str, typer.Option(metavar="N|P%", help="The largest wave: hosts, or a share of all.")
    ] = "10%",
    max_fail: Annotated[
        str,
        typer.Option(
            metavar="P%",
            help="The budget of the whole rollout: halt when more than this share of all "
            "its hosts failed or were unreachable (checked at every wave; see above).",
        ),
    ] = "5%",
    extra_vars: Annotated[
        str | None,
        typer.Option(
            metavar="YAML|JSON|@FILE",
            help="Variables for the playbook: a mapping, as YAML or JSON text or a file. "
            "Only the names its NAME.vars.yml declares, with the values it allows (school IT:"
            " those marked school_it); a name it does not take is refused, listing those it"
            " does. Values are passed as text, never templated.",
        ),
    ] = None,
    gate: Annotated[
        str | None,
        typer.Option(
            metavar="lessons",
            help="Also halt when lessons on changed devices fail to launch more often "
            "than on the same devices in the week before.",
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Check everything, show hosts and waves, start nothing."),
    ] = False,
    include_offline: Annotated[
        bool,
        typer.Option(
            "--include-offline",
            help="Also the devices offline now, at their last address (by default they "
            "are left out and listed as not reached).",
        ),
    ] = False,
    strategy: Annotated[
        str | None,
        typer.Option(
            metavar="mitogen|linear",
            help="Ansible's strategy for this rollout's waves: mitogen (Mitogen for "
            "Ansible: one Python per host for all its tasks, the faster) or linear "
            "(Ansible's own, the fallback should Mitogen fail on a playbook). Default: the "
            "controller's rollout_strategy. Retries keep the rollout's strategy.",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    if strategy is not None and strategy.strip() not in STRATEGIES:
        raise RequestRefused(f"--strategy {strategy!r}: one of {', '.join(STRATEGIES)}")
    try:
        parse_selector(select)
    except RolloutInputError as exc:
        raise RequestRefused(f"--select: {exc}") from None
    try:
        parse_amount(canary, "--canary")
        parse_amount(wave_size, "--wave-size")
        parse_percent(max_fail, "--max-fail")
    except RolloutInputError as exc:
        raise RequestRefused(str(exc)) from None
    if gate is not None and gate != "lessons":
        raise RequestRefused(f"--gate {gate!r}: the only gate is 'lessons'")
    request = RolloutRequest(
        playbook=playbook,
        selector=select,
        canary=canary.strip(),
        wave_size=wave_size.strip(),
        max_fail=max_fail.strip(),
        extra_vars_json=parse_extra_vars(extra_vars) if extra_vars is not None else "",
        gate_lessons=gate == "lessons",
        dry_run=dry_run,
        include_offline=include_offline,
        strategy=(strategy or "").strip(),
    )
    with client() as c:
        info = c.rollouts.start(request)
    _show_started(info, as_json)


def _watch(c: AdminClient, rollout_id: int, interval: float, as_json: bool) -> RolloutInfo:
    """Polls until the rollout is final, redrawing a bar of settled hosts; Ctrl-C stops
    watching (the rollout goes on)."""
    # rich is already required: cli/options.py prints through it, and typer brings it.
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    info = c.rollouts.get(rollout_id)
    misses = 0
    columns = (
        TextColumn("rollout {task.fields[id]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
    )
    with Progress(*columns, console=err if as_json else out, transient=as_json) as bar:
        settled, total = render.progress(info)
        task = bar.add_task("", total=total, completed=settled, id=rollout_id, note="")
        while True:
            settled, total = render.progress(info)
            bar.update(task, total=total, completed=settled, note=render.progress_note(info))
            if render.is_final(info.state):
                return info
            time.sleep(interval)
            try:
                info = c.rollouts.get(rollout_id)
                misses = 0
            except ControllerUnreachable:
                misses += 1
                if misses >= _WATCH_MISSES:
                    raise
                bar.update(task, note=f"no answer from the controller ({misses})")


@rollout_app.command("status")
def rollout_status(
    rollout_id: RolloutId,
    host: Annotated[
        str | None,
        typer.Option(
            "--host",
            metavar="DEVICE",
            help="Only this host, with its whole stored result: its tasks, the failing "
            "task's return code, output and result (bounded).",
            autocompletion=completion.devices,
        ),
    ] = None,
    watch: Annotated[
        bool, typer.Option("--watch", help="Show progress until it is over (Ctrl-C to stop).")
    ] = False,
    interval: Annotated[
        float, typer.Option(help="Seconds between polls with --watch.", min=0.5, max=300)
    ] = 2.0,
    as_json: JsonFlag = False,
) -> None:
    """A rollout's state, the --max-fail budget left, hosts by outcome, waves, and failed
    or unreachable hosts with the task that failed, its message, return code and the end
    of its output; why pending hosts wait, if they do. --host DEVICE shows one host's
    whole stored result.

    Exits 0 when done with every host reached and none failed (or still running or
    paused); 1 when it halted or was aborted, or has failed hosts; 7 when it ended with
    hosts not reached (done-unreached: retry --not-reached --failed takes them):
    `schoolctl rollout status 12 --watch && echo all good`.
    """
    if host is not None and watch:
        raise RequestRefused("--host shows one host's stored result; it does not --watch")
    with client() as c:
        if host is not None:
            info = c.rollouts.get(rollout_id, host)
        elif watch:
            try:
                info = _watch(c, rollout_id, interval, as_json)
            except KeyboardInterrupt:
                err.print(f"stopped watching; rollout {rollout_id} goes on", markup=False)
                raise typer.Exit(130) from None
        else:
            info = c.rollouts.get(rollout_id)
    if host is not None and as_json:
        print_json(render.host_json(info))
    elif host is not None:
        out.print(render.host_detail(info))
    elif as_json:
        print_json(render.rollout_json(info))
    else:
        out.print(render.rollout_detail(info, time.time()))
    raise typer.Exit(exit_code(info))


@rollout_app.command("list")
def rollout_list(
    state: Annotated[
        list[RolloutState] | None,
        typer.Option(help="Only rollouts in this state; repeat for several."),
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.", min=1)] = 50,
    as_json: JsonFlag = False,
) -> None:
    """List rollouts, newest first: state, hosts settled of all, failed, waves so far."""
    with client() as c:
        infos = c.rollouts.latest([s.value for s in state or ()], limit)
    if as_json:
        print_json([render.rollout_json(i) for i in infos])
    elif not infos:
        err.print("no rollouts match")
    else:
        out.print(render.rollouts_table(infos, time.time()))


def _changed(info: RolloutInfo, as_json: bool, words: str) -> None:
    if as_json:
        print_json(render.rollout_json(info))
    else:
        out.print(f"rollout {info.rollout_id} {info.state}: {words}", markup=False)


@rollout_app.command("pause")
def rollout_pause(rollout_id: RolloutId, as_json: JsonFlag = False) -> None:
    """Pause: the running wave finishes, no other starts until `rollout resume`."""
    with client() as c:
        info = c.rollouts.pause(rollout_id)
    _changed(info, as_json, "the running wave finishes, no other starts until resumed")


@rollout_app.command("resume")
def rollout_resume(rollout_id: RolloutId, as_json: JsonFlag = False) -> None:
    """Resume a paused rollout."""
    with client() as c:
        info = c.rollouts.resume(rollout_id)
    _changed(info, as_json, "the next wave starts when the school day allows")


@rollout_app.command("abort")
def rollout_abort(
    rollout_id: RolloutId,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Abort: stop the running wave's playbook now. Its hosts are interrupted (they may be
    left half changed: retry --failed takes them); those not reached yet are cancelled
    (unchanged: retry --not-reached). Asks first unless --yes."""
    if not yes:
        if not sys.stdin.isatty():
            raise RequestRefused(
                f"not aborting rollout {rollout_id} without --yes (no terminal to ask)"
            )
        if not typer.confirm(f"Abort rollout {rollout_id}? Its running wave is stopped at once"):
            raise typer.Exit(1)
    with client() as c:
        info = c.rollouts.abort(rollout_id)
    _changed(info, as_json, "the running wave was stopped, its hosts interrupted")


@rollout_app.command("retry")
def rollout_retry(
    rollout_id: RolloutId,
    failed: Annotated[
        bool,
        typer.Option(
            "--failed",
            help="The hosts that failed, were unreachable, or were interrupted by an abort.",
        ),
    ] = False,
    not_reached: Annotated[
        bool,
        typer.Option(
            "--not-reached",
            help="The hosts never reached: cancelled before their turn (halt, abort), or "
            "offline at the start and left out.",
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Start a new rollout of the same playbook and options to hosts of a finished one:
    --failed, --not-reached, or both (at least one). Devices offline now are left out
    unless the rollout took offline devices too. Prints the new rollout's number."""
    which = [w for w, given in (("failed", failed), ("not-reached", not_reached)) if given]
    if not which:
        raise RequestRefused(
            "retry needs --failed (failed, unreachable or interrupted hosts), "
            "--not-reached (hosts never reached), or both"
        )
    with client() as c:
        info = c.rollouts.retry(rollout_id, which)
    _show_started(info, as_json)
