"""`make demo`: a controller on SQLite and a few simulated devices, as real processes.

python demo/demo.py start   # starts everything under .demo/ and prints what to try
python demo/demo.py stop    # stops the processes it started, by pid
python demo/demo.py reset   # stops them and forgets the demo's data (.demo/)

A start while the demo runs says so and prints what to try again. The demo keeps its
data (certificates, users, devices' history) from one start to the next; each start
imports its own schedule, after whatever lessons are stored. A start that fails stops
what it started. SCHOOLFLEET_DEMO_DIR and SCHOOLFLEET_DEMO_PORT (the first of four
ports) move it, so that tests can run one beside a person's demo.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("SCHOOLFLEET_DEMO_DIR") or ROOT / ".demo").absolute()
PIDS = STATE / "pids.json"
BIN = Path(sys.executable).parent
_PORT = int(os.environ.get("SCHOOLFLEET_DEMO_PORT") or 7443)
CONTROLLER = f"127.0.0.1:{_PORT}"
METRICS = f"127.0.0.1:{_PORT + 1}"
# TLS without client certificates: enrollment and schoolctl.
PUBLIC = f"127.0.0.1:{_PORT + 2}"
UPLINK = f"127.0.0.1:{_PORT + 3}"
DATA = STATE / "data"
CA_CERT = DATA / "pki" / "ca.crt"
SCHOOLCTL_CONFIG = STATE / "schoolctl.toml"

DEVICES = [
    ("panel-1001-101", "panel", "school-1001", "room-101"),
    ("panel-1001-102", "panel", "school-1001", "room-102"),
    ("mono-1001-lab1", "monoblock", "school-1001", "lab-1"),
    ("laptop-1001-t07", "laptop", "school-1001", "room-101"),
    ("panel-1002-201", "panel", "school-1002", "room-201"),
    ("server-1002", "server", "school-1002", ""),
]


def _shown(path: Path) -> str:
    """A path as the person who typed `make demo` in the project folder can use it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _try_text(first_lesson: str) -> str:
    state = _shown(STATE)
    activate = _shown(BIN / "activate")
    return f"""
SchoolFleet demo is running: a controller on {CONTROLLER} (SQLite at {state}/controller.db)
and {len(DEVICES)} simulated devices in two schools, each a real agent process that
enrolled with a token and streams over mutual TLS. Logs are in {state}/*.log.
schoolctl is logged in as a central-ops user ({state}/schoolctl.toml, mode 0600). Try:

  . {activate}
  export SCHOOLCTL_CONFIG={SCHOOLCTL_CONFIG}
  schoolctl whoami
  schoolctl status
  schoolctl devices list
  schoolctl devices list --school school-1001 --kind panel
  schoolctl devices show panel-1001-101
  schoolctl devices list --json
  curl -s http://{METRICS}/metrics | grep ^schoolfleet_

Lessons: two short ones in each panel's room, the first {first_lesson}
({state}/schedule.csv); each panel "opens" it by itself (see {state}/panel-*.log):

  schoolctl lessons today
  grep -h "lesson event" {state}/panel-*.log

People and the audit log:

  schoolctl users create it-1001 --role school-it --school school-1001 > {state}/it.token
  SCHOOLCTL_TOKEN=$(cat {state}/it.token) schoolctl devices show panel-1002-201   # refused
  schoolctl audit

Stop one device and watch it go offline within 15 s (3 missed 5 s heartbeats):

  kill $(python3 -c 'import json;print(json.load(open("{state}/pids.json"))["panel-1001-102"])')
  schoolctl devices list --status offline

Shell completion (device, school and rollout ids too): schoolctl --install-completion
When done: make demo-stop (make demo-reset also forgets the demo's data)
"""


def _ours(pid: int) -> bool:
    """Whether ``pid`` is still one of the demo's SchoolFleet programs."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    # A pid reused by an unrelated program since the demo started is left alone.
    return Path(exe).name.startswith("python") and b"schoolfleet-" in cmdline


def _recorded() -> dict[str, int]:
    try:
        pids: dict[str, int] = json.loads(PIDS.read_text())
    except (OSError, ValueError):
        return {}
    return pids


def running() -> dict[str, int]:
    """The demo's processes still running, by name; empty when its controller is not."""
    alive = {name: pid for name, pid in _recorded().items() if _ours(pid)}
    return alive if "controller" in alive else {}


def stop(quiet: bool = False) -> None:
    """Stops every process the last `start` recorded that still runs, by pid."""
    alive = [pid for pid in _recorded().values() if _ours(pid)]
    for pid in alive:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while any(_ours(p) for p in alive) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in alive:
        if _ours(pid):
            os.kill(pid, signal.SIGKILL)
    PIDS.unlink(missing_ok=True)
    if quiet:
        return
    if alive:
        print(f"stopped {len(alive)} demo processes")
    else:
        print("the demo is not running: nothing to stop")


def reset() -> None:
    """Stops the demo and forgets its data: the next start begins from nothing."""
    stop(quiet=True)
    if STATE.exists():
        shutil.rmtree(STATE)
        print(f"the demo's data is gone ({_shown(STATE)}); make demo starts afresh")
    else:
        print("the demo has no data to forget")


def _spawn(name: str, argv: list[str]) -> int:
    log = (STATE / f"{name}.log").open("ab")
    # A session of its own: the demo outlives `make demo` and a Ctrl-C in that terminal.
    proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
    return proc.pid


def _run(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SCHOOLCTL_CONFIG": str(SCHOOLCTL_CONFIG)}
    env.pop("SCHOOLCTL_TOKEN", None)
    return subprocess.run(
        [str(BIN / argv[0]), *argv[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        input=stdin,
        env=env,
    )


def _must(*argv: str, stdin: str | None = None) -> str:
    done = _run(*argv, stdin=stdin)
    if done.returncode != 0:
        sys.exit(f"demo: {' '.join(argv[:3])} failed: {done.stderr.strip()}")
    return done.stdout


def _schoolctl_status() -> dict[str, object] | None:
    done = _run("schoolctl", "status", "--json")
    return json.loads(done.stdout) if done.returncode == 0 else None


def _login() -> None:
    """A central-ops user for schoolctl, whenever its config has none."""
    if SCHOOLCTL_CONFIG.exists() and "token" in SCHOOLCTL_CONFIG.read_text():
        return
    database = f"sqlite://{STATE / 'controller.db'}"
    name = f"demo-ops-{int(time.time())}"
    token = _must("schoolfleet-controller", "users", "create", name, "--database", database).strip()
    controller = ["--controller", PUBLIC, "--ca-cert", str(CA_CERT)]
    _must("schoolctl", *controller, "login", stdin=token + "\n")


def _enroll_tokens() -> dict[str, str]:
    """One token per school, for the devices that have no certificate yet."""
    schools = sorted({school for _, _, school, _ in DEVICES})
    return {
        school: _must(
            "schoolctl", "enroll", "token", "create", "--school", school, "--uses", "10"
        ).strip()
        for school in schools
    }


def start() -> None:
    """Starts the controller and the simulated devices unless they run; prints what to try."""
    already = running()
    if already:
        devices = len(already) - 1
        print(
            f"the demo is already running (controller pid {already['controller']}, "
            f"{devices} of {len(DEVICES)} devices); make demo-stop stops it"
        )
        print(_try_text(_first_lesson_words()))
        return
    # What an earlier demo left behind without its controller (a device, say).
    stop(quiet=True)
    try:
        first = _start()
    except BaseException:
        print("demo: the start failed; stopping what it started", file=sys.stderr)
        stop(quiet=True)
        raise
    print(_try_text(first))


def _start() -> str:
    STATE.mkdir(parents=True, exist_ok=True)
    (STATE / "controller.toml").write_text(
        f'listen = "{CONTROLLER}"\nmetrics_listen = "{METRICS}"\n'
        f'enroll_listen = "{PUBLIC}"\nuplink_listen = "{UPLINK}"\ndata_dir = "{DATA}"\n'
        f'database = "sqlite://{STATE / "controller.db"}"\n'
        "heartbeat_interval = 5\n"
        f'ports_file = "{STATE / "ports.json"}"\n'
        'content_hosts = ["lessons.example.edu"]\nlesson_lead = 10\nlesson_settle = 10\n'
        f'playbooks_dir = "{ROOT / "playbooks"}"\n'
    )
    if not CA_CERT.exists():
        _must("schoolfleet-controller", "init", "--data-dir", str(DATA), "--address", "127.0.0.1")
    (STATE / "ports.json").unlink(missing_ok=True)
    pids = {
        "controller": _spawn(
            "controller",
            [
                str(BIN / "schoolfleet-controller"),
                "serve",
                "--config",
                str(STATE / "controller.toml"),
            ],
        )
    }
    PIDS.write_text(json.dumps(pids))
    deadline = time.monotonic() + 20
    while not (STATE / "ports.json").exists():
        if time.monotonic() > deadline or not _ours(pids["controller"]):
            sys.exit(f"demo: the controller did not start; see {_shown(STATE)}/controller.log")
        time.sleep(0.1)
    _login()
    tokens = _enroll_tokens()
    for device_id, kind, school, room in DEVICES:
        config = STATE / f"{device_id}.toml"
        config.write_text(
            f'device_id = "{device_id}"\nkind = "{kind}"\nschool_id = "{school}"\n'
            f'room_id = "{room}"\ncontroller = "{CONTROLLER}"\n'
            f'spool_path = "{STATE / (device_id + "-spool.db")}"\n'
            f'cert_dir = "{STATE / ("tls-" + device_id)}"\nca_cert = "{CA_CERT}"\n'
            f'enroll_controller = "{PUBLIC}"\nenroll_token = "{tokens[school]}"\n'
            f'kiosk_argv = ["{sys.executable}", "{ROOT / "demo" / "kiosk.py"}", "{{url}}"]\n'
        )
        pids[device_id] = _spawn(
            device_id, [str(BIN / "schoolfleet-agent"), "--config", str(config)]
        )
        PIDS.write_text(json.dumps(pids))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = _schoolctl_status()
        totals = status.get("totals") if status else None
        if isinstance(totals, dict) and totals.get("online") == len(DEVICES):
            break
        time.sleep(0.5)
    else:
        print(
            f"demo: not every device came online in 30 s; see {_shown(STATE)}/*.log",
            file=sys.stderr,
        )
    return _schedule()


def _stored_lessons() -> list[dict[str, object]]:
    done = _run("schoolctl", "lessons", "today", "--json")
    lessons: list[dict[str, object]] = json.loads(done.stdout) if done.returncode == 0 else []
    return lessons


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


def _schedule() -> str:
    """Imports the demo's lessons; returns when the first starts, in words."""
    rooms = [(school, room) for _, kind, school, room in DEVICES if kind == "panel"]
    planned = plan_lessons(rooms, _stored_lessons(), time.time())
    rows = ["school,room,start,end,class,subject,teacher,content_url,remote"]
    for school, room, begin, subject in planned:
        rows.append(
            f"{school},{room},{_iso(begin)},{_iso(begin + 120)},7B,{subject},Ivanova,"
            f"https://lessons.example.edu/{subject},no"
        )
    path = STATE / "schedule.csv"
    path.write_text("\n".join(rows) + "\n")
    done = _run("schoolctl", "lessons", "import", str(path))
    if done.returncode != 0:
        # The demo runs without its lessons rather than not at all.
        print(f"demo: some lessons were not scheduled: {done.stderr.strip()}", file=sys.stderr)
    return _first_lesson_words()


def _first_lesson_words() -> str:
    upcoming = [
        datetime.fromisoformat(str(lesson["starts_at"]))
        for lesson in _stored_lessons()
        if lesson.get("state") == "scheduled"
    ]
    if not upcoming:
        return "ones of today are over"
    first = min(upcoming).astimezone()
    minutes = max(0, round((first.timestamp() - time.time()) / 60))
    return f"at {first:%H:%M} (in about {minutes} min)"


def _iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


_COMMANDS = {"start": start, "stop": stop, "reset": reset}

if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "start"
    if command not in _COMMANDS:
        sys.exit(f"usage: demo.py {'|'.join(_COMMANDS)}")
    _COMMANDS[command]()
