"""`make demo`: a controller on SQLite and a few simulated devices, as real processes.

python demo/demo.py start   # starts everything under .demo/ and prints what to try
python demo/demo.py stop    # stops the processes it started (and the city demo's), by pid
python demo/demo.py reset   # stops them and forgets the demo's data (.demo/)

A start while the demo runs says so and prints what to try again. The demo keeps its
data (certificates, users, devices' history) from one start to the next; each start
imports its own schedule, after whatever lessons are stored. A start that fails stops
what it started. SCHOOLFLEET_DEMO_DIR and SCHOOLFLEET_DEMO_PORT (the first of four
ports) move it, so that tests can run one beside a person's.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script (``python demo/demo.py``) the repository root is not on the path, and
# this file's folder would hide the demo package behind this module.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import os
import shutil
import time

from demo import lessons, pids
from demo.errors import DemoError
from demo.fleet import Device, Site
from demo.layout import BIN, ROOT, SINGLE_PIDS, STATE, shown
from demo.stop import stop_all, stop_single

_PORT = int(os.environ.get("SCHOOLFLEET_DEMO_PORT") or 7443)
CONTROLLER = f"127.0.0.1:{_PORT}"
METRICS = f"127.0.0.1:{_PORT + 1}"
# TLS without client certificates: enrollment and schoolctl.
PUBLIC = f"127.0.0.1:{_PORT + 2}"
UPLINK = f"127.0.0.1:{_PORT + 3}"
DATA = STATE / "data"
SITE = Site(
    folder=STATE,
    agents=CONTROLLER,
    public=PUBLIC,
    ca_cert=DATA / "pki" / "ca.crt",
    database=f"sqlite://{STATE / 'controller.db'}",
)
RECORD = pids.PidFile(SINGLE_PIDS, STATE)

DEVICES = [
    Device("panel-1001-101", "panel", "school-1001", "room-101"),
    Device("panel-1001-102", "panel", "school-1001", "room-102"),
    Device("mono-1001-lab1", "monoblock", "school-1001", "lab-1"),
    Device("laptop-1001-t07", "laptop", "school-1001", "room-101"),
    Device("panel-1002-201", "panel", "school-1002", "room-201"),
    Device("server-1002", "server", "school-1002", ""),
]


def _try_text(first_lesson: str) -> str:
    state = shown(STATE)
    activate = shown(BIN / "activate")
    return f"""
SchoolFleet demo is running: a controller on {CONTROLLER} (SQLite at {state}/controller.db)
and {len(DEVICES)} simulated devices in two schools, each a real agent process that
enrolled with a token and streams over mutual TLS. Logs are in {state}/*.log.
schoolctl is logged in as a central-ops user ({state}/schoolctl.toml, mode 0600). Try:

  . {activate}
  export SCHOOLCTL_CONFIG={SITE.schoolctl_config}
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
Three replicas on PostgreSQL behind HAProxy instead: make demo-city
When done: make demo-stop (make demo-reset also forgets the demo's data)
"""


def running() -> dict[str, int]:
    """The demo's processes still running, by name; empty when its controller is not."""
    alive = RECORD.alive()
    return alive if "controller" in alive else {}


def stop() -> None:
    """Stops every process the last `start` recorded (and the city demo's), by pid."""
    for line in stop_all():
        print(line)


def reset() -> None:
    """Stops the demos and forgets their data: the next start begins from nothing."""
    stop_all()
    if STATE.exists():
        shutil.rmtree(STATE)
        print(f"the demo's data is gone ({shown(STATE)}); make demo starts afresh")
    else:
        print("the demo has no data to forget")


def start() -> None:
    """Starts the controller and the simulated devices unless they run; prints what to try."""
    already = running()
    if already:
        devices = len(already) - 1
        print(
            f"the demo is already running (controller pid {already['controller']}, "
            f"{devices} of {len(DEVICES)} devices); make demo-stop stops it"
        )
        print(_try_text(lessons.first_lesson_words(SITE)))
        return
    # What an earlier demo left behind without its controller (a device, say).
    stop_single()
    try:
        first = _start()
    except BaseException:
        print("demo: the start failed; stopping what it started", file=sys.stderr)
        stop_single()
        raise
    print(_try_text(first))


def _start() -> str:
    STATE.mkdir(parents=True, exist_ok=True)
    (STATE / "controller.toml").write_text(
        f'listen = "{CONTROLLER}"\nmetrics_listen = "{METRICS}"\n'
        f'enroll_listen = "{PUBLIC}"\nuplink_listen = "{UPLINK}"\ndata_dir = "{DATA}"\n'
        f'database = "{SITE.database}"\n'
        "heartbeat_interval = 5\n"
        f'ports_file = "{STATE / "ports.json"}"\n'
        'content_hosts = ["lessons.example.edu"]\nlesson_lead = 10\nlesson_settle = 10\n'
        f'playbooks_dir = "{ROOT / "playbooks"}"\n'
    )
    if not SITE.ca_cert.exists():
        where = ["--data-dir", str(DATA), "--address", "127.0.0.1"]
        SITE.must("schoolfleet-controller", "init", *where)
    (STATE / "ports.json").unlink(missing_ok=True)
    controller = pids.spawn(
        STATE,
        "controller",
        [str(BIN / "schoolfleet-controller"), "serve", "--config", str(STATE / "controller.toml")],
    )
    RECORD.record("controller", controller)
    deadline = time.monotonic() + 20
    while not (STATE / "ports.json").exists():
        if time.monotonic() > deadline or not pids.is_ours(controller, STATE):
            raise DemoError(f"the controller did not start; see {shown(STATE)}/controller.log")
        time.sleep(0.1)
    SITE.login()
    tokens = SITE.enroll_tokens(DEVICES)
    for device in DEVICES:
        argv = SITE.agent_argv(device, tokens[device.school])
        RECORD.record(device.device_id, pids.spawn(STATE, device.device_id, argv))
    if not SITE.wait_online(len(DEVICES), 30):
        print(
            f"demo: not every device came online in 30 s; see {shown(STATE)}/*.log",
            file=sys.stderr,
        )
    return lessons.schedule(SITE, DEVICES)


_COMMANDS = {"start": start, "stop": stop, "reset": reset}

if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "start"
    if command not in _COMMANDS:
        sys.exit(f"usage: demo.py {'|'.join(_COMMANDS)}")
    try:
        _COMMANDS[command]()
    except DemoError as exc:
        sys.exit(f"demo: {exc}")
