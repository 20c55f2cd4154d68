"""schoolctl lessons: import a schedule, see the day's lessons, launch one by hand."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from cli import completion
from cli.client.values import LessonInfo
from cli.errors import CliError, RequestRefused
from cli.groups import command_group
from cli.imports import ImportReport
from cli.options import JsonFlag, client, err, out, print_json
from cli.render import iso
from cli.schools import require_school
from inventory.row_fields import RowError
from inventory.schedule import ScheduleError, ScheduleRow
from inventory.schedule_file import open_schedule

lessons_app = command_group(
    "Lessons: import the schedule, see today's lessons, launch one by hand."
)

_STATE_STYLE = {
    "held": "green",
    "partly-held": "yellow",
    "failed": "red",
    "no-device": "red",
    "dispatched": "cyan",
    "scheduled": "",
}


@lessons_app.command("import")
def lessons_import(
    path: Annotated[
        Path, typer.Argument(metavar="FILE", help="A schedule, .csv or .json.", show_default=False)
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check every row; store nothing.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Import a schedule file: every row is checked, each bad row is reported with its
    line and reason, the good ones are stored. The same file again changes nothing.

    Columns (CSV header, or JSON keys): school, room, start, end, class, subject,
    teacher, content_url, remote. Times need a time zone: 2026-11-24T08:30+03:00.
    Exits 2 if any row was refused."""
    try:
        source = open_schedule(path)
        parsed = list(source.rows())
    except ScheduleError as exc:
        raise RequestRefused(str(exc)) from None
    rows = [r for r in parsed if isinstance(r, ScheduleRow)]
    report = ImportReport(
        path,
        len(parsed),
        dry_run,
        {"added": 0, "updated": 0, "unchanged": 0, "locked": 0},
        [(r.line, r.message) for r in parsed if isinstance(r, RowError)],
    )
    if rows:
        with client() as c:
            report.add(c.lessons.import_rows(path.name, rows, dry_run))
    report.show(as_json, {"locked": "already started (kept)"})
    if report.errors:
        raise typer.Exit(2)


def _lesson_json(info: LessonInfo) -> dict[str, Any]:
    s = info.lesson
    return {
        "lesson_id": info.lesson_id,
        "school_id": s.school_id,
        "room_id": s.room_id,
        "starts_at": iso(s.starts_at),
        "ends_at": iso(s.ends_at),
        "class": s.class_name,
        "subject": s.subject,
        "teacher": s.teacher,
        "content_url": s.content_url,
        "remote": s.remote,
        "state": info.state,
        "reason": info.reason,
        "dispatched_at": iso(info.dispatched_at),
        "panels": info.panels,
        "launched": info.launched,
        "failed": info.failed,
    }


def _lessons_table(lessons: list[LessonInfo]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("START", "END", "SCHOOL", "ROOM", "CLASS", "SUBJECT", "STATE", "PANELS"):
        table.add_column(name, no_wrap=True)
    table.add_column("WHY")
    for info in lessons:
        s = info.lesson
        style = _STATE_STYLE.get(info.state, "")
        state = f"[{style}]{info.state}[/]" if style else info.state
        table.add_row(
            time.strftime("%H:%M", time.localtime(s.starts_at)),
            time.strftime("%H:%M", time.localtime(s.ends_at)),
            s.school_id,
            s.room_id,
            escape(s.class_name),
            escape(s.subject),
            state,
            f"{info.launched}/{info.panels}" if info.panels else "-",
            escape(info.reason),
        )
    return table


@lessons_app.command("today")
def lessons_today(
    school: Annotated[
        str | None, typer.Option(help="Only this school.", autocompletion=completion.schools)
    ] = None,
    room: Annotated[str | None, typer.Option(help="Only this room.")] = None,
    day: Annotated[
        str,
        typer.Option(
            help="Another day's instead: 2026-09-01, tomorrow or yesterday (the schools' "
            "time zone).",
        ),
    ] = "",
    as_json: JsonFlag = False,
) -> None:
    """Today's lessons with their state: scheduled, dispatched, then held, partly-held,
    failed or no-device, and why; PANELS is launched/dispatched."""
    with client() as c:
        lessons = c.lessons.today(school, room, day)
        if not lessons:
            require_school(c, school)
    if as_json:
        print_json([_lesson_json(x) for x in lessons])
    elif not lessons:
        err.print(f"no lessons {_day_words(day)}")
    else:
        out.print(_lessons_table(lessons))


def _day_words(day: str) -> str:
    """ "today", "tomorrow", "on 2026-09-01": the day as the empty answer says it."""
    if not day:
        return "today"
    return day if day in ("today", "tomorrow", "yesterday") else f"on {day}"


@lessons_app.command("launch")
def lessons_launch(
    url: Annotated[str, typer.Argument(metavar="URL", help="What the panels open.")],
    room: Annotated[str, typer.Option(help="The room whose panels open it.")],
    school: Annotated[
        str, typer.Option(help="The room's school.", autocompletion=completion.schools)
    ],
    minutes: Annotated[int, typer.Option(help="How long it lasts.", min=1, max=720)] = 45,
    title: Annotated[str, typer.Option(help="What it is, for the lists.")] = "",
    as_json: JsonFlag = False,
) -> None:
    """Launch a lesson by hand, now, on a room's panels (it takes over from whatever
    they show)."""
    with client() as c:
        info = c.lessons.launch(school, room, url, minutes, title)
    if as_json:
        print_json(_lesson_json(info))
    elif info.state == "no-device":
        raise CliError(f"room {room} of school {school} has no panel: nothing launched")
    else:
        out.print(f"{info.lesson_id}: sent to {info.panels} panel(s)")
