"""`make demo`: a controller on SQLite and a few simulated devices, as real processes.

python demo/demo.py start   # (re)starts everything under .demo/ and prints what to try
python demo/demo.py stop    # stops the processes it started, by pid
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".demo"
PIDS = STATE / "pids.json"
BIN = Path(sys.executable).parent
CONTROLLER = "127.0.0.1:7443"
METRICS = "127.0.0.1:7444"
# TLS without client certificates: enrollment and schoolctl.
PUBLIC = "127.0.0.1:7445"
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

TRY = f"""
SchoolFleet demo is running: a controller on {CONTROLLER} (SQLite at .demo/controller.db)
and {len(DEVICES)} simulated devices in two schools, each a real agent process that
enrolled with a token and streams over mutual TLS. Logs are in .demo/*.log.
schoolctl is logged in as a central-ops user (.demo/schoolctl.toml, mode 0600). Try:

  . .venv/bin/activate
  export SCHOOLCTL_CONFIG=$PWD/.demo/schoolctl.toml
  schoolctl whoami
  schoolctl status
  schoolctl devices list
  schoolctl devices list --school school-1001 --kind panel
  schoolctl devices show panel-1001-101
  schoolctl devices list --json
  curl -s http://{METRICS}/metrics | grep ^schoolfleet_

Lessons: two short ones in each panel's room, the first starting within two minutes
(.demo/schedule.csv); each panel "opens" it by itself (see .demo/panel-*.log):

  schoolctl lessons today
  grep -h "lesson event" .demo/panel-*.log

People and the audit log:

  schoolctl users create it-1001 --role school-it --school school-1001 > .demo/it.token
  SCHOOLCTL_TOKEN=$(cat .demo/it.token) schoolctl devices show panel-1002-201   # refused
  schoolctl audit

Stop one device and watch it go offline within 15 s (3 missed 5 s heartbeats):

  kill $(python3 -c 'import json;print(json.load(open(".demo/pids.json"))["panel-1001-102"])')
  schoolctl devices list --status offline

When done: make demo-stop
"""


def _alive(pid: int) -> bool:
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    # A pid reused by an unrelated program since the demo started is left alone.
    return Path(exe).name.startswith("python")


def stop() -> None:
    """Stops every process the last `start` recorded, by pid."""
    if not PIDS.exists():
        return
    pids: dict[str, int] = json.loads(PIDS.read_text())
    for pid in pids.values():
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while any(_alive(p) for p in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids.values():
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    PIDS.unlink()
    print(f"stopped {len(pids)} demo processes")


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
    """Starts the controller and the simulated devices, waits until they are online."""
    stop()
    STATE.mkdir(exist_ok=True)
    (STATE / "controller.toml").write_text(
        f'listen = "{CONTROLLER}"\nmetrics_listen = "{METRICS}"\n'
        f'enroll_listen = "{PUBLIC}"\ndata_dir = "{DATA}"\n'
        f'database = "sqlite://{STATE / "controller.db"}"\n'
        "heartbeat_interval = 5\n"
        f'ports_file = "{STATE / "ports.json"}"\n'
        'content_hosts = ["lessons.example.edu"]\nlesson_lead = 10\nlesson_settle = 10\n'
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
        if time.monotonic() > deadline or not _alive(pids["controller"]):
            sys.exit(f"demo: the controller did not start; see {STATE / 'controller.log'}")
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
        print("demo: not every device came online in 30 s; see .demo/*.log", file=sys.stderr)
    _schedule()
    print(TRY)


def _schedule() -> None:
    """Two short lessons in each panel's room: the first starts in a minute."""
    start = (int(time.time()) // 60 + 2) * 60
    rows = ["school,room,start,end,class,subject,teacher,content_url,remote"]
    for _, kind, school, room in DEVICES:
        if kind != "panel":
            continue
        for n, subject in enumerate(("maths", "history")):
            begin = start + n * 180
            rows.append(
                f"{school},{room},{_iso(begin)},{_iso(begin + 120)},7B,{subject},Ivanova,"
                f"https://lessons.example.edu/{subject},no"
            )
    path = STATE / "schedule.csv"
    path.write_text("\n".join(rows) + "\n")
    _must("schoolctl", "lessons", "import", str(path))


def _iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "start"
    if command not in ("start", "stop"):
        sys.exit("usage: demo.py start|stop")
    start() if command == "start" else stop()
