"""A controller with hundreds of mutual-TLS streams is SIGTERMed and started again.

The devices are enrolled through the real Enroll call and run by the restart
benchmark's worker (bench/storm_devices.py: one connection each, the agent's
reconnect rule and retry-hint reading), beside one real agent. Asserted as a user
sees it: the exit code and time, the controller's log, the store's rows, and every
status the devices got.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.restart_storm import SCHOOL, Events, enroll_all, start_worker, store_rows
from common.retry_hint import ended_unsaid, masked_end
from tests.hostile_fleet import enrolled_agent, seed_token
from tests.procs import Agent, Controller, free_port, init_controller_ca, tls_env, wait_until

pytestmark = pytest.mark.e2e

DEVICES = 300
ROOT = Path(__file__).resolve().parent.parent


def _worker(controller: Controller, devices: Path, events: Events) -> subprocess.Popen[str]:
    return start_worker(controller, devices, events)


def _stop_worker(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    # Its pipes too, once the pump has read to their end.
    for thread in threading.enumerate():
        if thread.name == f"pump-{proc.pid}":
            thread.join(10)
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None and not pipe.closed:
            pipe.close()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Controller, Agent, Events, subprocess.Popen[str]]]:
    """A mutual-TLS controller (1 s heartbeats), DEVICES simulated devices and a real agent."""
    data = tmp_path / "data"
    init_controller_ca(data)
    controller = Controller(tmp_path, port=free_port(), env=tls_env(data))
    worker: subprocess.Popen[str] | None = None
    agent: Agent | None = None
    try:
        controller.start()
        ca = (data / "pki/ca.crt").read_bytes()
        rows = enroll_all(
            controller.enroll_port,
            ca,
            seed_token(controller.database, SCHOOL, uses=DEVICES),
            DEVICES,
        )
        devices = tmp_path / "devices.json"
        devices.write_text(json.dumps(rows))
        events = Events()
        worker = _worker(controller, devices, events)
        # The agent's own backoff defaults, not the tests' short ones.
        agent = enrolled_agent(
            controller,
            "panel-real",
            SCHOOL,
            data / "pki",
            tmp_path,
            backoff_initial=1.0,
            backoff_cap=60.0,
        )
        wait_until(lambda: events.back_since(0, DEVICES), 60, "every device connected")
        wait_until(
            lambda: store_rows(controller.database).get("panel-real", (0, 0))[0] >= 2,
            30,
            "the real agent reporting",
        )
        yield controller, agent, events, worker
    finally:
        if worker is not None:
            _stop_worker(worker)
        if agent is not None:
            agent.stop()
        controller.stop()


def _cut(log: str) -> int:
    """Streams the controller's log says it cut by exiting after its shutdown grace."""
    found = re.findall(r"controller stopped .*streams_cut=(\d+)", log)
    return int(found[-1]) if found else 0


@pytest.mark.slow
def test_sigterm_ends_every_stream_cleanly_and_the_fleet_comes_back_as_told(
    fleet: tuple[Controller, Agent, Events, subprocess.Popen[str]],
) -> None:
    controller, agent, events, worker = fleet
    time.sleep(2)  # heartbeats flowing on every stream
    signalled = time.time()
    assert controller.stop(signal.SIGTERM, timeout=30) == 0
    took = time.time() - signalled
    print(f"shutdown took {took:.2f}s")
    log = controller.log_text()

    assert took < 2.0, f"shutdown took {took:.1f}s"
    assert "Traceback" not in log, log[-3000:]
    assert "stream handlers still running" not in log
    # Every stream's end is in the store: no device left marked connected.
    assert not [d for d, (_, stream) in store_rows(controller.database).items() if stream]
    assert f"stream_ends_recorded={DEVICES + 1}" in log

    # Started again on the same port: every device is back, and the only attempts that
    # ended were ended by the controller, with a status and a retry hint.
    controller.start()
    listening = (controller.workdir / "ports.json").stat().st_mtime
    back = wait_until(lambda: events.back_since(listening, DEVICES), 20, "every device back")
    assert max(back) - listening < 15
    with events.lock:
        ended = [f for f in events.failures if f[0] >= signalled]
    # A heartbeat written just as the controller ends the stream makes grpc's client
    # report INTERNAL "Internal error from Core" instead of the controller's status:
    # the end was the controller's, its word lost on the device's side. A stream the
    # grace did not reach (a loaded machine) is cut by the exit: UNAVAILABLE, no word.
    unchosen = [
        f for f in ended if f[4] is None and not (f[1] == "after" and ended_unsaid(f[2], f[3]))
    ]
    assert not unchosen, unchosen[:5]
    cut = [f for f in ended if f[4] is None and not masked_end(f[2], f[3])]
    assert len(cut) <= _cut(log), cut[:5]
    assert len(ended) - len(unchosen) >= DEVICES
    # The real agent read the controller's word and came back.
    wait_until(lambda: agent.log.read_text().count("controller link up") >= 2, 20, "the agent back")
    assert "controller_said=restart" in agent.log.read_text()

    # No grace at all: no stream is told, the exit cuts them all. Still quick and clean,
    # every end recorded, and every device comes back over the spread its Welcome named
    # (301 devices: the shortest, 3 s), the real agent too.
    time.sleep(2)
    controller.stop(signal.SIGTERM, timeout=30)
    controller.env["SCHOOLFLEET_CONTROLLER_SHUTDOWN_GRACE"] = "0"
    controller.start()
    listening = (controller.workdir / "ports.json").stat().st_mtime
    wait_until(lambda: events.back_since(listening, DEVICES), 30, "every device back")
    wait_until(lambda: agent.log.read_text().count("controller link up") >= 3, 30, "the agent back")
    time.sleep(2)
    signalled = time.time()
    assert controller.stop(signal.SIGTERM, timeout=30) == 0
    took = time.time() - signalled
    log = controller.log_text()
    print(f"shutdown without grace took {took:.2f}s")
    assert took < 2.0, f"shutdown took {took:.1f}s"
    assert "Traceback" not in log, log[-3000:]
    assert f"streams not told within the grace count={DEVICES + 1} " in log
    assert log.count(f"stream_ends_recorded={DEVICES + 1} ") == 3
    assert not [d for d, (_, stream) in store_rows(controller.database).items() if stream]
    controller.start()
    listening = (controller.workdir / "ports.json").stat().st_mtime
    wait_until(lambda: events.back_since(listening, DEVICES), 30, "every device back")
    with events.lock:
        ended = [f for f in events.failures if signalled <= f[0] < listening]
    assert len(ended) == DEVICES, ended[:5]
    assert all(f[1] == "after" and f[4] is None and ended_unsaid(f[2], f[3]) for f in ended)
    wait_until(lambda: agent.log.read_text().count("controller link up") >= 4, 30, "the agent back")
    assert "controller_gone spread=3s" in agent.log.read_text()

    # Everything acked is stored: stop the controller, then the devices.
    time.sleep(2)
    assert controller.stop(signal.SIGTERM, timeout=30) == 0
    assert worker.stdin is not None
    worker.stdin.close()
    worker.wait(30)
    stored = store_rows(controller.database)
    assert len(events.acked) == DEVICES and all(events.acked.values())
    short = {d: (seq, stored[d][0]) for d, seq in events.acked.items() if stored[d][0] < seq}
    assert not short
    assert "Traceback" not in controller.log_text()
