"""The demos' lessons: two short ones in each panel's room, imported through schoolctl
after whatever lessons are stored, and the first one's time in words."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime

from demo.fleet import Device, Site


def plan_lessons(
    rooms: list[tuple[str, str]], stored: list[dict[str, object]], now: float
) -> list[tuple[str, str, float, str]]:
    """Two short lessons per room (school, room, start, subject), two minutes apart: the
    first within two minutes, or a minute after the room's last stored lesson ends."""
    first = (int(now) // 60 + 2) * 60
    busy: dict[tuple[str, str], float] = {}
    for lesson in stored:
        room = (str(lesson["school_id"]), str(lesson["room_id"]))
        ends = datetime.fromisoformat(str(lesson["ends_at"])).timestamp()
        busy[room] = max(busy.get(room, 0.0), ends)
    planned = []
    for room in rooms:
        begin = max(first, (int(busy.get(room, 0.0)) // 60 + 2) * 60)
        for n, subject in enumerate(("maths", "history")):
            planned.append((room[0], room[1], float(begin + n * 180), subject))
    return planned


def _stored(site: Site) -> list[dict[str, object]]:
    # Tomorrow's too: late in the day the demo's lessons, or one launched by hand, run
    # past midnight, and the next start plans after them.
    lessons: list[dict[str, object]] = []
    for day in ("today", "tomorrow"):
        done = site.run("schoolctl", "lessons", "today", "--day", day, "--json")
        lessons += json.loads(done.stdout) if done.returncode == 0 else []
    return lessons


def schedule(site: Site, devices: list[Device]) -> str:
    """Imports lessons for the panels' rooms; returns when the first starts, in words."""
    rooms = sorted({(d.school, d.room) for d in devices if d.kind == "panel"})
    stored = _stored(site)
    planned = plan_lessons(rooms, stored, time.time())
    rows = ["school,room,start,end,class,subject,teacher,content_url,remote"]
    for school, room, begin, subject in planned:
        rows.append(
            f"{school},{room},{_iso(begin)},{_iso(begin + 120)},7B,{subject},Ivanova,"
            f"https://lessons.example.edu/{subject},no"
        )
    path = site.folder / "schedule.csv"
    path.write_text("\n".join(rows) + "\n")
    done = site.run("schoolctl", "lessons", "import", str(path))
    if done.returncode != 0:
        # The demo runs without its lessons rather than not at all.
        print(f"demo: some lessons were not scheduled: {done.stderr.strip()}", file=sys.stderr)
        return first_lesson_words(site)
    return _words(stored, [begin for _, _, begin, _ in planned])


def first_lesson_words(site: Site) -> str:
    """When the first lesson still to come starts, in words."""
    return _words(_stored(site), [])


def _words(stored: list[dict[str, object]], planned: list[float]) -> str:
    upcoming = [
        datetime.fromisoformat(str(lesson["starts_at"])).timestamp()
        for lesson in stored
        if lesson.get("state") == "scheduled"
    ] + planned
    if not upcoming:
        return "ones of today are over"
    first = datetime.fromtimestamp(min(upcoming)).astimezone()
    minutes = max(0, round((first.timestamp() - time.time()) / 60))
    return f"at {first:%H:%M} (in about {minutes} min)"


def _iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
