"""The lesson launcher with real processes: a small Python kiosk, and real Chromium.

The fake kiosk is a script that records its argv, pid and session to a file and then
sleeps, exits, or does both (once each); every process a test starts is killed by
its process group afterwards, whatever the test did.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import logging
import os
import signal
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.launcher import Launcher, exit_text, expand_argv
from agent.lessons import LessonEvent, LessonLaunch
from common.content_hosts import url_allowed
from inventory.lessons import EventKind, FailReason
from tests.debian_tools import need

LAUNCHED, RELAUNCHED = EventKind.LAUNCHED, EventKind.RELAUNCHED
FAILED, ENDED = EventKind.FAILED, EventKind.ENDED
HOSTS = ("school.example",)
URL = "https://lessons.school.example/play/{7B}?x=1"

FAKE_KIOSK = """
import json, os, signal, subprocess, sys, time
record, mode = sys.argv[1], sys.argv[2]
child = None
if "child" in mode:
    # A helper in the kiosk's group, as a browser's renderers are.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]).pid
if "stubborn" in mode:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(record, "a") as f:
    line = {"pid": os.getpid(), "sid": os.getsid(0), "argv": sys.argv[3:], "child": child}
    f.write(json.dumps(line) + "\\n")
marker = record + ".crashed"
if "crash" in mode and not ("once" in mode and os.path.exists(marker)):
    open(marker, "w").close()
    sys.exit(3)
time.sleep(120)
"""


@dataclass
class Kiosk:
    """The fake kiosk program and what its runs recorded."""

    folder: Path
    pgids: list[int] = field(default_factory=list)

    @property
    def record(self) -> Path:
        return self.folder / "runs.jsonl"

    def argv(self, mode: str = "sleep") -> list[str]:
        script = self.folder / "kiosk.py"
        script.write_text(FAKE_KIOSK)
        return [sys.executable, str(script), str(self.record), mode, "{url}", "id={lesson_id}"]

    def runs(self) -> list[dict[str, object]]:
        if not self.record.exists():
            return []
        runs = [json.loads(line) for line in self.record.read_text().splitlines()]
        # Kept for the clean-up, whatever the test does next.
        self.pgids = [int(str(run["pid"])) for run in runs]
        return runs


@pytest.fixture
def kiosk(tmp_path: Path) -> Iterator[Kiosk]:
    k = Kiosk(tmp_path)
    try:
        yield k
    finally:
        k.runs()
        for pgid in k.pgids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)


def lesson(lesson_id: str = "s1.101.L1", url: str = URL, minutes: float = 1) -> LessonLaunch:
    now = time.time()
    return LessonLaunch(lesson_id=lesson_id, url=url, starts_at=now, ends_at=now + minutes * 60)


def launcher(
    argv: Sequence[str],
    events: list[LessonEvent],
    hosts: Sequence[str] = HOSTS,
    network: bool = True,
    grace: float = 5.0,
) -> Launcher:
    return Launcher(argv, events.append, lambda: hosts, lambda: network, stop_grace=grace)


async def until(check: Callable[[], object], what: str, limit: float = 10) -> None:
    """Polls ``check`` until it is truthy; fails after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit}s waiting for {what}")
        await asyncio.sleep(0.02)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def showing(launch: Launcher) -> tuple[str | None, int | None]:
    """What the launcher runs; a call, so that mypy does not narrow it across awaits."""
    return launch.lesson_id, launch.pid


def kinds(events: list[LessonEvent]) -> list[tuple[str, EventKind, FailReason | None]]:
    return [(e.lesson_id, e.kind, e.reason) for e in events]


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


# The pure parts.


@pytest.mark.parametrize(
    "url",
    [
        "https://school.example/lesson",
        "https://lessons.school.example:8443/a?b={c}",
        "http://School.Example./x",
        "https://a.b.school.example",
    ],
)
def test_url_on_an_allowed_host_is_allowed(url: str) -> None:
    assert url_allowed(url, [" School.Example. ", "other.example"]) is None


@pytest.mark.parametrize(
    ("url", "hosts", "reason"),
    [
        ("ftp://school.example/x", HOSTS, "scheme 'ftp' is not allowed"),
        ("javascript:alert(1)", HOSTS, "scheme 'javascript' is not allowed"),
        ("file:///etc/passwd", HOSTS, "scheme 'file' is not allowed"),
        ("//school.example/x", HOSTS, "scheme '(none)' is not allowed"),
        ("--disable-web-security", HOSTS, "scheme '(none)' is not allowed"),
        ("https://evil.example/", HOSTS, "host 'evil.example' is not one of"),
        ("https://evilschool.example/", HOSTS, "host 'evilschool.example' is not one of"),
        ("https://school.example.evil.example/", HOSTS, "is not one of"),
        ("https://school.example@evil.example/", HOSTS, "carries a user name or password"),
        ("https:///path", HOSTS, "URL has no host"),
        ("https://school.example/a b", HOSTS, "spaces or control characters"),
        ("https://school.example/\x00", HOSTS, "spaces or control characters"),
        ("https://[::1/", HOSTS, "URL cannot be parsed"),
        ("https://school.example:99999/", HOSTS, "URL cannot be parsed"),
        ("https://user:pw@school.example/", HOSTS, "carries a user name or password"),
        ("http://10.0.0.1/", ["0.0.1"], "host '10.0.0.1' is not one of"),
        ("https://school.example/", [], "no content hosts are allowed"),
        ("https://school.example/", [" ", ""], "no content hosts are allowed"),
    ],
)
def test_url_refused_says_why(url: str, hosts: Sequence[str], reason: str) -> None:
    refused = url_allowed(url, hosts)
    assert refused is not None
    assert reason in refused


def test_ip_hosts_are_allowed_when_listed() -> None:
    assert url_allowed("http://127.0.0.1:8080/a", ["127.0.0.1"]) is None
    assert url_allowed("http://[::1]:8080/a", ["::1"]) is None


def test_url_hosts_compare_in_their_ascii_form() -> None:
    assert url_allowed("https://школа.рф/урок", ["xn--80atdl2c.xn--p1ai"]) is None
    assert url_allowed("https://xn--80atdl2c.xn--p1ai/", ["ШКОЛА.рф"]) is None
    assert url_allowed("https://школа.рф/", ["school.example"]) is not None


def test_argv_template_is_filled_in_per_item_and_once() -> None:
    template = ["kiosk", "--app={url}", "{lesson_id}", "{other}"]
    url = "https://h/{lesson_id}/{0}"
    assert expand_argv(template, url, "L1") == ["kiosk", f"--app={url}", "L1", "{other}"]


def test_exit_text() -> None:
    assert exit_text(3) == "exit status 3"
    assert exit_text(-signal.SIGSEGV) == "killed by SIGSEGV"


# With the fake kiosk program.


def test_launched_then_ended_at_the_end_time(kiosk: Kiosk) -> None:
    events: list[LessonEvent] = []

    async def scenario() -> None:
        cmd = lesson(minutes=1.5 / 60)
        before = time.time()
        await launcher(kiosk.argv(), events).launch("c1", cmd)
        await until(kiosk.runs, "the kiosk to start")
        await until(lambda: len(events) == 2, "the end time", limit=15)
        assert time.time() >= cmd.ends_at
        assert [e.kind for e in events] == [LAUNCHED, ENDED]
        assert all((e.lesson_id, e.command_id) == ("s1.101.L1", "c1") for e in events)
        assert events[0].at >= before
        assert events[1].message == "end time reached"

    run(scenario)
    (started,) = kiosk.runs()
    assert started["argv"] == [URL, "id=s1.101.L1"]  # braces in the URL untouched
    assert started["sid"] == started["pid"]  # its own session and group
    assert gone(int(str(started["pid"])))


def test_dies_twice_relaunched_once_then_crashed(kiosk: Kiosk) -> None:
    events: list[LessonEvent] = []

    async def scenario() -> None:
        await launcher(kiosk.argv("crash"), events).launch("c1", lesson())
        await until(lambda: len(events) == 3, "the second death")
        await asyncio.sleep(0.3)  # and no third start

    run(scenario)
    assert [(e.kind, e.reason) for e in events] == [
        (LAUNCHED, None),
        (RELAUNCHED, None),
        (FAILED, FailReason.CRASHED),
    ]
    assert "exit status 3" in events[1].message
    assert events[2].message == "the program died again during the lesson: exit status 3"
    assert len(kiosk.runs()) == 2


def test_relaunched_program_runs_on_until_the_lesson_ends(kiosk: Kiosk) -> None:
    events: list[LessonEvent] = []

    async def scenario() -> None:
        launch = launcher(kiosk.argv("crash-once"), events)
        await launch.launch("c1", lesson())
        await until(lambda: len(kiosk.runs()) == 2, "the relaunch")
        assert launch.pid == kiosk.runs()[1]["pid"]
        await launch.end("s1.101.L1")

    run(scenario)
    assert [e.kind for e in events] == [LAUNCHED, RELAUNCHED, ENDED]
    assert events[2].message == "ended by EndLesson"
    assert all(gone(int(str(r["pid"]))) for r in kiosk.runs())


def test_log_names_a_reason_only_when_there_is_one(
    kiosk: Kiosk, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    events: list[LessonEvent] = []

    async def scenario() -> None:
        launch = launcher(kiosk.argv(), events)
        await launch.launch("c1", lesson())
        await until(kiosk.runs, "the kiosk to start")
        await launch.close()
        await launcher([str(tmp_path / "missing"), "{url}"], events).launch("c2", lesson("L2"))

    with caplog.at_level(logging.INFO, logger="agent.launcher"):
        run(scenario)
    lines = [r.getMessage() for r in caplog.records if "lesson event" in r.getMessage()]
    launched = next(line for line in lines if "kind=KIND_LAUNCHED" in line)
    failed = next(line for line in lines if "kind=KIND_FAILED" in line)
    assert "reason=" not in launched, launched
    assert "reason=REASON_NO_PROGRAM" in failed, failed


def test_program_that_cannot_be_started_is_no_program(tmp_path: Path) -> None:
    events: list[LessonEvent] = []
    not_executable = tmp_path / "kiosk"
    not_executable.write_text("#!/bin/sh\n")

    async def scenario() -> None:
        await launcher([str(tmp_path / "missing"), "{url}"], events).launch("c1", lesson())
        await launcher([str(not_executable), "{url}"], events).launch("c2", lesson())
        await launcher([], events).launch("c3", lesson())

    run(scenario)
    assert [(e.kind, e.reason) for e in events] == [(FAILED, FailReason.NO_PROGRAM)] * 3
    assert events[0].message == f"cannot start {tmp_path / 'missing'}: No such file or directory"
    assert events[1].message.endswith("Permission denied")
    assert "kiosk_argv is empty" in events[2].message


@pytest.mark.parametrize(
    ("url", "hosts", "message"),
    [
        ("file:///etc/passwd", HOSTS, "scheme 'file' is not allowed, only https and http"),
        ("https://evil.example/x", HOSTS, "host 'evil.example' is not one of the content hosts"),
        (URL, (), "no content hosts are allowed: the controller sent none"),
    ],
)
def test_refused_url_starts_nothing(
    kiosk: Kiosk, url: str, hosts: Sequence[str], message: str
) -> None:
    events: list[LessonEvent] = []

    async def scenario() -> None:
        await launcher(kiosk.argv(), events, hosts=hosts).launch("c1", lesson(url=url))

    run(scenario)
    assert [(e.kind, e.reason, e.message) for e in events] == [
        (FAILED, FailReason.URL_REFUSED, message)
    ]
    assert kiosk.runs() == []


def test_no_network_starts_nothing(kiosk: Kiosk) -> None:
    events: list[LessonEvent] = []

    async def scenario() -> None:
        await launcher(kiosk.argv(), events, network=False).launch("c1", lesson())

    run(scenario)
    assert kinds(events) == [("s1.101.L1", FAILED, FailReason.NO_NETWORK)]
    assert kiosk.runs() == []


def test_lesson_already_over_is_ignored(kiosk: Kiosk) -> None:
    events: list[LessonEvent] = []

    async def scenario() -> None:
        await launcher(kiosk.argv(), events).launch("c1", lesson(minutes=-1))
        await launcher(kiosk.argv(), events).launch("c2", LessonLaunch("", URL, 0.0, 0.0))

    run(scenario)
    assert events == []
    assert kiosk.runs() == []


def test_same_command_or_same_lesson_runs_once(kiosk: Kiosk) -> None:
    events: list[LessonEvent] = []

    async def scenario() -> None:
        launch = launcher(kiosk.argv(), events)
        await launch.launch("c1", lesson())
        await launch.launch("c1", lesson())  # the command again
        await launch.launch("c2", lesson())  # the lesson again, sent anew on reconnect
        await until(kiosk.runs, "the kiosk to start")
        await asyncio.sleep(0.3)
        assert len(kiosk.runs()) == 1
        await launch.end("s1.101.L1")
        await launch.launch("c1", lesson())  # a late resend of an ended lesson's command

    run(scenario)
    assert [e.kind for e in events] == [LAUNCHED, ENDED]
    assert len(kiosk.runs()) == 1


def test_new_lesson_replaces_the_running_one(kiosk: Kiosk) -> None:
    events: list[LessonEvent] = []

    async def scenario() -> None:
        launch = launcher(kiosk.argv(), events)
        await launch.launch("c1", lesson("L1"))
        await until(kiosk.runs, "the first kiosk")
        first = launch.pid
        # Refused: the running lesson stays.
        await launch.launch("c2", lesson("L2", url="https://evil.example/"))
        assert launch.pid == first
        await launch.launch("c3", lesson("L3"))
        assert first is not None
        assert gone(first)
        assert launch.lesson_id == "L3"
        await until(lambda: len(kiosk.runs()) == 2, "the second kiosk")
        await launch.close()

    run(scenario)
    assert [(e.lesson_id, e.command_id, e.kind) for e in events] == [
        ("L1", "c1", LAUNCHED),
        ("L2", "c2", FAILED),
        ("L1", "c1", ENDED),
        ("L3", "c3", LAUNCHED),
    ]
    assert events[2].message == "replaced by lesson L3"
    assert kiosk.runs()[1]["argv"] == [URL, "id=L3"]


def test_end_and_close(kiosk: Kiosk) -> None:
    events: list[LessonEvent] = []

    async def scenario() -> None:
        launch = launcher(kiosk.argv(), events)
        await launch.end("L1")  # nothing running: nothing to do
        await launch.launch("c1", lesson("L1"))
        await until(kiosk.runs, "the first kiosk")
        await launch.end("L2")  # not the running lesson
        assert showing(launch)[0] == "L1"
        await launch.end("L1")
        await launch.end("L1")  # already ended
        await launch.launch("c2", lesson("L2"))
        await until(lambda: len(kiosk.runs()) == 2, "the second kiosk")
        await launch.close()
        assert showing(launch) == (None, None)
        await launch.launch("c3", lesson("L3"))  # the agent is stopping

    run(scenario)
    # close() stops the program without ENDED: the lesson itself did not end.
    assert [(e.lesson_id, e.kind) for e in events] == [
        ("L1", LAUNCHED),
        ("L1", ENDED),
        ("L2", LAUNCHED),
    ]
    assert len(kiosk.runs()) == 2
    assert all(gone(int(str(r["pid"]))) for r in kiosk.runs())


def test_whole_group_is_stopped_and_sigterm_ignored_is_killed(kiosk: Kiosk) -> None:
    events: list[LessonEvent] = []

    async def scenario() -> None:
        launch = launcher(kiosk.argv("stubborn-child"), events, grace=0.5)
        await launch.launch("c1", lesson())
        await until(kiosk.runs, "the kiosk to start")
        started = time.monotonic()
        await launch.end("s1.101.L1")
        assert time.monotonic() - started >= 0.5  # SIGTERM was ignored until SIGKILL

    run(scenario)
    (started,) = kiosk.runs()
    pid, child = int(str(started["pid"])), int(str(started["child"]))
    assert gone(pid)
    assert gone(child)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    assert [e.kind for e in events] == [LAUNCHED, ENDED]


# With real Chromium.

LESSON_PAGE = b"""<!doctype html>
<html><head><title>Lesson</title></head><body><h1>7B mathematics</h1>
<script>
  // Only a browser that ran this script calls back, with what only it knows.
  const seen = new URLSearchParams({ua: navigator.userAgent, width: String(innerWidth)});
  fetch("/rendered?" + seen);
</script></body></html>
"""


class _LessonServer(http.server.ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _LessonHandler)
        self.requests: list[str] = []
        self.rendered = threading.Event()


class _LessonHandler(http.server.BaseHTTPRequestHandler):
    server: _LessonServer

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        body = LESSON_PAGE if self.path.startswith("/lesson") else b""
        self.send_response(200 if body else 204)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if self.path.startswith("/rendered?"):
            self.server.rendered.set()

    def log_message(self, format: str, *args: object) -> None:
        pass  # the test reads server.requests


@pytest.fixture
def lesson_server() -> Iterator[_LessonServer]:
    server = _LessonServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.mark.e2e
def test_chromium_shows_the_lesson_page(tmp_path: Path, lesson_server: _LessonServer) -> None:
    chromium = need("chromium", "chromium")
    events: list[LessonEvent] = []
    url = f"http://127.0.0.1:{lesson_server.server_address[1]}/lesson?id=L1"
    argv = [
        chromium,
        # The panel's kiosk flags, made to run here: no display (headless=new keeps
        # running on its URL until it is stopped, as a kiosk does), root in a container
        # (no sandbox), no GPU, a small /dev/shm, and a fresh profile.
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--noerrdialogs",
        f"--user-data-dir={tmp_path / 'profile'}",
        "{url}",
    ]
    pgid: int | None = None

    async def scenario() -> None:
        nonlocal pgid
        launch = Launcher(argv, events.append, lambda: ["127.0.0.1"], lambda: True)
        await launch.launch("c1", lesson("L1", url=url))
        pgid = launch.pid
        rendered = await asyncio.to_thread(lesson_server.rendered.wait, 60)
        assert rendered, f"no callback from the page; requests: {lesson_server.requests}"
        assert launch.lesson_id == "L1"  # still running after the page loaded
        await launch.end("L1")

    try:
        run(scenario)
    finally:
        if pgid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
    assert [e.kind for e in events] == [LAUNCHED, ENDED]
    assert lesson_server.requests[0] == "/lesson?id=L1"
    callback = next(p for p in lesson_server.requests if p.startswith("/rendered?"))
    seen = urllib.parse.parse_qs(urllib.parse.urlsplit(callback).query)
    assert "HeadlessChrome" in seen["ua"][0]
    assert int(seen["width"][0]) > 0
    assert pgid is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)  # the whole browser tree is gone
