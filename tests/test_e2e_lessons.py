"""Lessons end to end: a schedule file reaches the room's panel, which opens the lesson
by itself when it starts; the controller counts it held; a restart loses nothing."""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.debian_tools import need
from tests.lesson_site import FAKE_KIOSK, LessonSite
from tests.procs import Agent, Controller, free_port, schoolctl, wait_until

pytestmark = pytest.mark.e2e

HEADER = "school,room,start,end,class,subject,teacher,content_url,remote\n"


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")


def _row(room: str, start: float, end: float, url: str, school: str = "s1") -> str:
    return f"{school},{room},{_iso(start)},{_iso(end)},7B,maths,Ivanova,{url},no\n"


def _controller(tmp: Path, port: int = 0, zone: str = "") -> Controller:
    return Controller(
        tmp,
        port,
        {
            "SCHOOLFLEET_CONTROLLER_HEARTBEAT_INTERVAL": "1",
            "SCHOOLFLEET_CONTROLLER_CONTENT_HOSTS": '["127.0.0.1"]',
            "SCHOOLFLEET_CONTROLLER_LESSON_LEAD": "1",
            "SCHOOLFLEET_CONTROLLER_LESSON_SETTLE": "1",
            "SCHOOLFLEET_CONTROLLER_LESSON_ON_TIME": "10",
            **({"SCHOOLFLEET_CONTROLLER_TIMEZONE": zone} if zone else {}),
        },
    )


def _panel(tmp: Path, c: Controller, device_id: str, room: str) -> Agent:
    kiosk = tmp / "kiosk.py"
    kiosk.write_text(FAKE_KIOSK)
    pids = tmp / f"{device_id}.pids"
    argv = [sys.executable, str(kiosk), "{url}", str(pids)]
    return Agent(tmp, device_id, "panel", "s1", room, c.address, extra={"kiosk_argv": argv})


def _online(c: Controller, device_id: str) -> None:
    def up() -> bool:
        shown = schoolctl(c.address, "devices", "show", device_id, "--json")
        return shown.code == 0 and shown.json()["status"] == "online"

    wait_until(up, 20, f"{device_id} online")


def _lessons(c: Controller) -> list[dict[str, Any]]:
    done = schoolctl(c.address, "lessons", "today", "--json")
    assert done.code == 0, done.err
    lessons: list[dict[str, Any]] = done.json()
    return lessons


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_scheduled_lesson_opens_by_itself_and_is_counted_held(
    tmp_path: Path, agents: list[Agent]
) -> None:
    with LessonSite() as site:
        c = _controller(tmp_path).start()
        try:
            agents.append(_panel(tmp_path, c, "panel-101", "r101").start())
            _online(c, "panel-101")
            # Whole seconds (the file says so), and far enough ahead that two imports and
            # a listing finish before the dispatcher's lead, on a busy machine too.
            start = float(int(time.time() + 10))
            schedule = tmp_path / "week.csv"
            schedule.write_text(HEADER + _row("r101", start, start + 6, site.url("maths")))

            imported = schoolctl(c.address, "lessons", "import", str(schedule))
            assert imported.code == 0, imported.err
            assert "1 rows: 1 added, 0 updated, 0 unchanged" in imported.out
            again = schoolctl(c.address, "lessons", "import", str(schedule))
            assert "1 rows: 0 added, 0 updated, 1 unchanged" in again.out
            [lesson] = _lessons(c)
            assert (lesson["room_id"], lesson["state"]) == ("r101", "scheduled")

            # Nobody touches the panel: it has the lesson a second early (lesson_lead)
            # and opens the page at the start, by its own clock.
            [opened] = wait_until(lambda: site.hits("/lesson/maths"), 20, "the lesson page")
            assert start - 0.2 < opened < start + 1.5
            assert "lesson held until its start" in agents[0].log.read_text()
            pid = int((tmp_path / "panel-101.pids").read_text().split()[0])

            def settled() -> dict[str, Any] | None:
                [lesson] = _lessons(c)
                return lesson if lesson["state"] not in ("scheduled", "dispatched") else None

            lesson = wait_until(settled, 30, "the lesson's outcome")
            assert (lesson["state"], lesson["panels"], lesson["launched"]) == ("held", 1, 1)
            assert not _alive(pid), "the kiosk program is closed at the lesson's end"
            metrics = c.metrics()
            assert metrics['schoolfleet_lesson_panels_today{result="launched",school="s1"}'] == 1
            assert metrics['schoolfleet_lessons_today{school="s1",state="held"}'] == 1
            assert metrics['schoolfleet_lessons_today{school="s1",state="failed"}'] == 0
            assert metrics["schoolfleet_lesson_launch_latency_seconds_count"] == 1
            assert metrics['schoolfleet_lesson_launch_latency_seconds_bucket{le="0.1"}'] == 1
            log = agents[0].log.read_text()
            assert "lesson" in log
        finally:
            c.stop()


def test_a_late_panel_gets_its_lesson_and_a_restart_neither_loses_nor_repeats_it(
    tmp_path: Path, agents: list[Agent]
) -> None:
    port = free_port()
    with LessonSite() as site:
        c = _controller(tmp_path, port).start()
        try:
            # The panel is known (it reported once), then goes off.
            panel = _panel(tmp_path, c, "panel-102", "r102").start()
            agents.append(panel)
            _online(c, "panel-102")
            panel.stop()
            start = time.time() + 2
            schedule = tmp_path / "day.json"
            schedule.write_text(
                '[{"school": "s1", "room": "r102", '
                f'"start": "{_iso(start)}", "end": "{_iso(start + 30)}", '
                '"class": "8A", "subject": "history", '
                f'"content_url": "{site.url("history")}"}}]'
            )
            assert schoolctl(c.address, "lessons", "import", str(schedule)).code == 0
            wait_until(lambda: _lessons(c)[0]["state"] == "dispatched", 15, "dispatched")

            # The controller restarts while the lesson is on and the panel is off.
            assert c.stop() == 0
            c.start()
            assert site.hits("/lesson/history") == []
            agents.append(panel.start())
            wait_until(lambda: site.hits("/lesson/history"), 20, "the late panel's lesson")
            time.sleep(3)  # reconnects and a second dispatcher pass would show here
            assert len(site.hits("/lesson/history")) == 1
            [lesson] = _lessons(c)
            assert (lesson["state"], lesson["panels"], lesson["launched"]) == ("dispatched", 1, 1)
            assert c.log_text().count("lessons dispatched count=1 panels=1 ") == 1
        finally:
            c.stop()


def test_bad_rows_are_named_by_line_and_good_ones_kept(tmp_path: Path, agents: list[Agent]) -> None:
    c = _controller(tmp_path).start()
    try:
        agents.append(_panel(tmp_path, c, "panel-103", "r103").start())
        _online(c, "panel-103")
        t = time.time() + 3600
        good = "https://lessons.example.edu/maths"
        schedule = tmp_path / "bad.csv"
        schedule.write_text(
            HEADER
            + _row("r103", t, t + 2700, good)
            + _row("r999", t, t + 2700, good)
            + _row("r103", t + 600, t + 3000, good)
            + _row("r103", t + 7200, t + 7000, good)
            + _row("r103", t + 9000, t + 9600, "http://elsewhere.example/x")
            + "s1,r103,2026-11-24T08:30,2026-11-24T09:15,7B,maths,,https://x.example/y,no\n"
        )
        first = schoolctl(c.address, "lessons", "import", str(schedule))
        assert first.code == 2
        lines = first.err.splitlines()
        assert [line.split(":")[1] for line in lines] == ["3", "4", "5", "6", "7"]
        assert "room r999 of school s1 is not in the inventory" in lines[0]
        assert "overlaps line 2 in room r103 of school s1" in lines[1]
        assert ("end" in lines[2] and "before" in lines[2]) or "after" in lines[2]
        assert "uses http" in lines[3] and "elsewhere.example" in lines[3]
        assert "has no time zone" in lines[4]
        assert "Traceback" not in first.err
        assert "6 rows: 1 added, 0 updated, 0 unchanged" in first.out
        assert "5 refused" in first.out

        again = schoolctl(c.address, "lessons", "import", str(schedule), "--json")
        assert again.code == 2
        assert again.json()["added"] == 0 and again.json()["unchanged"] == 1
        assert len(again.json()["refused"]) == 5

        for args, words in (
            (("lessons", "import", str(tmp_path / "none.csv")), "none.csv"),
            (("lessons", "import", str(schedule.with_suffix(".txt"))), ".txt"),
        ):
            schedule.with_suffix(".txt").write_text("x")
            refused = schoolctl(c.address, *args)
            assert refused.code == 2 and refused.err.count("\n") == 1, refused
            assert words in refused.err and "Traceback" not in refused.err

        # A school's IT may not put lessons into another school.
        it2 = c.create_user("it2", "school-it", "s2").token
        other = schoolctl(c.address, "lessons", "import", str(schedule), token=it2)
        assert other.code == 2
        assert "user it2 (school-it) may not lessons.import in school s1" in other.err
        denied = schoolctl(c.address, "audit", "--actor", "it2", "--json").json()
        assert [(e["action"], e["outcome"], e["school_id"]) for e in denied][-1] == (
            "lessons.import",
            "denied",
            "s1",
        )
    finally:
        c.stop()


def test_a_real_browser_renders_the_lesson_and_it_is_counted_held(
    tmp_path: Path, agents: list[Agent]
) -> None:
    chromium = need("chromium", "chromium")
    argv = [
        chromium,
        # As root in a container: no sandbox, no GPU, a small /dev/shm; its own profile.
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--noerrdialogs",
        f"--user-data-dir={tmp_path / 'profile'}",
        "{url}",
    ]
    with LessonSite() as site:
        c = _controller(tmp_path).start()
        try:
            panel = Agent(tmp_path, "panel-201", "panel", "s1", "r201", c.address)
            panel.extra["kiosk_argv"] = argv
            agents.append(panel.start())
            _online(c, "panel-201")
            start = time.time() + 3
            schedule = tmp_path / "live.csv"
            schedule.write_text(HEADER + _row("r201", start, start + 12, site.url("physics")))
            assert schoolctl(c.address, "lessons", "import", str(schedule)).code == 0

            # The page was requested and its script ran: the browser rendered it.
            wait_until(lambda: site.hits("/rendered/physics"), 30, "the page's script")
            assert len(site.hits("/lesson/physics")) == 1

            def settled() -> dict[str, Any] | None:
                [lesson] = _lessons(c)
                return lesson if lesson["state"] not in ("scheduled", "dispatched") else None

            lesson = wait_until(settled, 40, "the lesson's outcome")
            assert (lesson["state"], lesson["launched"]) == ("held", 1), lesson
            assert "lesson ended" in c.log_text()
        finally:
            c.stop()


def test_a_lesson_launched_by_hand_opens_now(tmp_path: Path, agents: list[Agent]) -> None:
    with LessonSite() as site:
        c = _controller(tmp_path).start()
        try:
            agents.append(_panel(tmp_path, c, "panel-301", "r301").start())
            _online(c, "panel-301")
            url = site.url("by-hand")
            launched = schoolctl(
                c.address, "lessons", "launch", url, "--school", "s1", "--room", "r301", "--json"
            )
            assert launched.code == 0, launched.err
            info = launched.json()
            assert (info["state"], info["panels"]) == ("dispatched", 1)
            assert info["lesson_id"].endswith("/manual")
            wait_until(lambda: site.hits("/lesson/by-hand"), 15, "the page opened by hand")
            entry = schoolctl(c.address, "audit", "--action", "lessons.launch", "--json").json()
            assert [(e["target"], e["outcome"]) for e in entry] == [("r301", "ok")]

            for args, code, words in (
                (("--room", "r999"), 2, "room r999 of school s1 is not in the inventory"),
                (("--room", "r301", "--minutes", "0"), 2, "--minutes"),
            ):
                refused = schoolctl(c.address, "lessons", "launch", url, "--school", "s1", *args)
                assert refused.code == code and words in refused.err, refused
            other = schoolctl(
                c.address, "lessons", "launch", "ftp://x/y", "--school", "s1", "--room", "r301"
            )
            assert other.code == 2 and "ftp" in other.err and "Traceback" not in other.err
        finally:
            c.stop()


def test_a_term_of_lessons_imports_in_parts_and_again_changes_nothing(
    tmp_path: Path, agents: list[Agent]
) -> None:
    zone = ZoneInfo("Asia/Yekaterinburg")
    c = _controller(tmp_path, zone=zone.key).start()
    try:
        agents.append(_panel(tmp_path, c, "panel-401", "r401").start())
        _online(c, "panel-401")
        first = time.time() + 86400
        url = "https://lessons.example.edu/" + "a" * 200
        rows = [_row("r401", first + n * 3600, first + n * 3600 + 2700, url) for n in range(3000)]
        schedule = tmp_path / "term.csv"
        schedule.write_text(HEADER + "".join(rows))
        assert schedule.stat().st_size > 600 * 1024, "more than one 512 KiB part"
        done = schoolctl(c.address, "lessons", "import", str(schedule), timeout=120)
        assert done.code == 0, done.err
        assert "3000 rows: 3000 added, 0 updated, 0 unchanged" in done.out
        again = schoolctl(c.address, "lessons", "import", str(schedule), timeout=120)
        assert "3000 rows: 0 added, 0 updated, 3000 unchanged" in again.out

        # Another day's lessons, that day being the schools' (UTC+5), not UTC's.
        starts = [first + n * 3600 for n in range(3000)]

        def on(day: str) -> int:
            return sum(datetime.fromtimestamp(t, zone).date().isoformat() == day for t in starts)

        later = (datetime.fromtimestamp(first, zone) + timedelta(days=2)).date().isoformat()
        listed = schoolctl(c.address, "lessons", "today", "--day", later, "--json")
        assert listed.code == 0 and len(listed.json()) == on(later) == 24, listed
        assert {x["starts_at"][:10] for x in listed.json()} == {
            (datetime.fromisoformat(later) - timedelta(days=1)).date().isoformat(),
            later,
        }, "from 00:00 at UTC+5, which is 19:00 UTC the day before"
        tomorrow = (datetime.fromtimestamp(time.time(), zone) + timedelta(days=1)).date()
        listed = schoolctl(c.address, "lessons", "today", "--day", "tomorrow", "--json")
        assert len(listed.json()) == on(tomorrow.isoformat()), listed
        none = schoolctl(c.address, "lessons", "today", "--day", "yesterday")
        assert (none.code, none.err) == (0, "no lessons yesterday\n"), none
        none = schoolctl(c.address, "lessons", "today", "--day", "2020-01-01")
        assert (none.code, none.err) == (0, "no lessons on 2020-01-01\n"), none
        for bad in ("2026-02-30", "20260901", "2026-W36-1", "'; DROP TABLE lessons; --"):
            refused = schoolctl(c.address, "lessons", "today", "--day", bad)
            assert refused.code == 2 and refused.err.count("\n") == 1, refused
            assert f"day {bad!r} is not a date like 2026-09-01" in refused.err, refused
        assert len(schoolctl(c.address, "lessons", "today", "--day", later, "--json").json()) == 24
    finally:
        c.stop()
