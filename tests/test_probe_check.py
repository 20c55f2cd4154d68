"""Active probes (issue 9): the facts parser and the schedule's offsets as plain values;
then real probes of real sshd hosts in namespaces, of a listener that never speaks, of
names that do not resolve; and the prober's schedule over loopback listeners."""

from __future__ import annotations

import asyncio
import math
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from controller.infra.probe_check import Checked, Checker, ProbeSettings
from controller.infra.probe_facts import parse_facts
from controller.infra.probes import Prober, cycle_start, offset, plan
from inventory.infra import HostKey, ProbeResult, ProbeTarget, TargetKind
from tests.netns import needs_root
from tests.ssh_hosts import SshHost, ssh_hosts

# What the facts command prints on a Debian server (shortened /proc/meminfo).
SERVER_OUTPUT = """\
@@ uptime
350735.47 1379841.12
@@ loadavg
0.52 0.58 0.59 1/389 12345
@@ meminfo
MemTotal:        8000000 kB
MemFree:          500000 kB
MemAvailable:    2000000 kB
Buffers:          100000 kB
Cached:          1500000 kB
@@ df
Filesystem     1024-blocks     Used Available Capacity Mounted on
/dev/sda1         10000000  2500000   7500000      25% /
"""

# An OpenWrt access point: busybox df, an old kernel without MemAvailable, two radios.
AP_OUTPUT = """\
@@ uptime
1234.50 2000.00
@@ loadavg
0.00 0.01 0.05 1/60 999
@@ meminfo
MemTotal:         124000 kB
MemFree:           40000 kB
Buffers:            2000 kB
Cached:            20000 kB
@@ df
Filesystem           1024-blocks    Used Available Capacity Mounted on
overlayfs:/overlay        9000      3000      6000  33% /
@@ stations
wlan0 12
wlan1 3
"""


def test_the_facts_of_a_server_are_read() -> None:
    assert parse_facts(SERVER_OUTPUT) == {
        "uptime_seconds": 350735.47,
        "load1": 0.52,
        "load5": 0.58,
        "load15": 0.59,
        "memory_percent": 75.0,
        "disk_percent": 25.0,
    }


def test_an_access_point_counts_its_clients_on_every_radio() -> None:
    facts = parse_facts(AP_OUTPUT)
    assert facts["clients"] == 15
    # No MemAvailable: free + buffers + cached count as available.
    assert facts["memory_percent"] == pytest.approx(100 * (124000 - 62000) / 124000)
    assert facts["disk_percent"] == pytest.approx(100 / 3)


def test_no_radio_in_ap_mode_means_no_client_count() -> None:
    # iw is installed (the section is there) but no interface is an access point.
    assert "clients" not in parse_facts(SERVER_OUTPUT + "@@ stations\n")
    assert parse_facts(SERVER_OUTPUT + "@@ stations\nwlan0 0\n")["clients"] == 0


def test_garbled_parts_are_left_out_and_the_rest_kept() -> None:
    garbled = SERVER_OUTPUT.replace("0.52 0.58 0.59", "0.52 x 0.59").replace(
        "MemTotal:        8000000", "MemTotal:        0"
    )
    facts = parse_facts(garbled + "sh: timeout: not found\n")
    assert set(facts) == {"uptime_seconds", "disk_percent"}
    assert parse_facts("sh: timeout: not found\n") == {}
    assert parse_facts("@@ uptime\nnan 1\n@@ df\nFilesystem\n/dev/x 1 0 0 0% /\n") == {}


@given(st.text())
def test_any_output_gives_facts_in_range_and_never_an_error(output: str) -> None:
    for name, value in parse_facts(output).items():
        assert math.isfinite(value)
        assert value >= 0
        if name.endswith("_percent"):
            assert value <= 100


@given(st.lists(st.sampled_from(["@@ uptime", "@@ df", "@@ stations", "1 2 3", "x", ""])))
def test_section_soup_never_raises(lines: list[str]) -> None:
    parse_facts("\n".join(lines))


def test_offsets_are_stable_and_spread_evenly_over_the_interval() -> None:
    ids = [f"ap-{i:05d}" for i in range(10_000)]
    offsets = [offset(i, 60.0) for i in ids]
    assert offsets == [offset(i, 60.0) for i in ids]
    assert all(0 <= o < 60 for o in offsets)
    per_6s = [0] * 10
    for o in offsets:
        per_6s[int(o // 6)] += 1
    # 1,000 expected per tenth of the interval; binomial sd ~30.
    assert all(880 <= n <= 1120 for n in per_6s), per_6s
    # Twice the interval: the same fraction of it.
    assert offset("ap-00001", 120.0) == pytest.approx(2 * offset("ap-00001", 60.0))


def test_a_cycle_plan_is_in_time_order_and_leaves_out_what_was_due_before() -> None:
    targets = [ProbeTarget(TargetKind.AP, f"ap-{i}", "s1", "198.18.0.1") for i in range(50)]
    start = cycle_start(1_000_000.5, 10.0)
    assert start == 1_000_000.0
    whole = plan(targets, start, 10.0, not_before=start)
    assert [t for _, t in whole] != targets
    assert sorted(t.target_id for _, t in whole) == sorted(t.target_id for t in targets)
    assert [d for d, _ in whole] == sorted(d for d, _ in whole)
    late = plan(targets, start, 10.0, not_before=start + 5)
    assert {t.target_id for _, t in late} == {
        t.target_id for t in targets if offset(t.target_id, 10.0) >= 5
    }


def test_the_deadline_is_every_step_s_timeout() -> None:
    settings = ProbeSettings(connect_timeout=1, banner_timeout=2, auth_timeout=3, command_timeout=4)
    assert settings.deadline == 2 * 1 + 2 * 2 + 3 + 4


def _pinned(host: SshHost) -> HostKey:
    kind, data = host.host_key.split()[:2]
    return HostKey(kind, data)


def _server(host: SshHost, pinned: HostKey | None, target_id: str = "srv-1") -> ProbeTarget:
    return ProbeTarget(TargetKind.SERVER, target_id, "school-1", host.address, "root", 22, pinned)


def _transports() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if isinstance(t, paramiko.Transport)]


@contextmanager
def _silent_listener() -> Iterator[int]:
    """A port on 127.0.0.1 that accepts connections and never speaks: the kernel completes
    them into the listen queue, which nothing reads (room for more than a test makes)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(256)
        yield listener.getsockname()[1]


def _write_client_key(path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


@pytest.mark.e2e
@needs_root
def test_probes_of_real_ssh_hosts(tmp_path: Path) -> None:
    with ssh_hosts(3) as (up, changed, stopped):
        checker = Checker(ProbeSettings(private_key_file=up.key_file, banner_timeout=5))

        # The pinned key: logged in, facts read (the namespace shows the machine's /proc).
        probe = checker.check(_server(up, _pinned(up)))
        result = probe.result
        assert (result.up, result.reason, result.seen_key) == (True, "", None), result
        assert result.facts["uptime_seconds"] > 0
        assert 0 < result.facts["memory_percent"] <= 100
        assert 0 < result.facts["disk_percent"] <= 100
        assert {"load1", "load5", "load15"} <= set(result.facts)
        assert "clients" not in result.facts  # no radio in AP mode here
        assert probe.ssh_seconds is not None
        assert 0 < probe.tcp_seconds < result.duration < 5

        # No key pinned yet: reachable, the key seen is recorded for `servers trust`.
        result = checker.check(_server(up, None)).result
        assert result.up
        assert result.seen_key == _pinned(up)
        assert result.reason == (
            f"host key not trusted yet: {_pinned(up).fingerprint()} (schoolctl servers trust srv-1)"
        )
        assert result.facts == {}
        ap = ProbeTarget(TargetKind.AP, "ap-1", "school-1", up.address, "root", 22, None)
        result = checker.check(ap).result
        assert result.reason.endswith("(schoolctl cannot trust an access point's key yet)")

        # Another host's key pinned: refused before any login attempt.
        log_before = changed.log_text()
        result = checker.check(_server(changed, _pinned(up), "srv-2")).result
        assert result.reason.startswith(
            f"host key changed: presented {_pinned(changed).fingerprint()}, "
            f"pinned {_pinned(up).fingerprint()}; not logged in"
        ), result.reason
        assert result.seen_key == _pinned(changed)
        assert result.facts == {}
        # sshd logs an attempt, failed or not ("authenticating user", "Accepted").
        time.sleep(0.2)
        new_lines = changed.log_text()[len(log_before) :]
        assert "authenticating user" not in new_lines
        assert "Accepted" not in new_lines

        # A key the host does not accept, and a key file that is missing.
        other_key = tmp_path / "other_key"
        _write_client_key(other_key)
        refused = Checker(ProbeSettings(private_key_file=other_key)).check(_server(up, _pinned(up)))
        assert refused.result.up
        assert refused.result.reason == "login refused for root with the controller's key"
        missing = tmp_path / "missing_key"
        no_key = Checker(ProbeSettings(private_key_file=missing)).check(_server(up, _pinned(up)))
        assert no_key.result.up
        assert no_key.result.reason.startswith(f"cannot read the controller's SSH key {missing}")

        # TCP only: reachable, nothing else tried.
        tcp = checker.check(ProbeTarget(TargetKind.AP, "ap-1", "school-1", up.address))
        assert (tcp.result.up, tcp.result.reason, tcp.ssh_seconds) == (True, "", None)

        stopped.stop()
        result = checker.check(_server(stopped, _pinned(stopped), "srv-3")).result
        assert (result.up, result.reason) == (False, "connection refused")
    assert not _transports()


@pytest.mark.e2e
def test_a_target_that_accepts_and_says_nothing_is_down_within_its_timeouts() -> None:
    settings = ProbeSettings(connect_timeout=1, banner_timeout=1, private_key_file=None)
    with _silent_listener() as port:
        target = ProbeTarget(TargetKind.AP, "ap-mute", "school-1", "127.0.0.1", "root", port)
        started = time.monotonic()
        probe = Checker(settings).check(target)
        elapsed = time.monotonic() - started
    assert (probe.result.up, probe.result.reason) == (False, "no SSH banner within 1s")
    assert 1 <= elapsed < 2.5
    assert probe.ssh_seconds is not None
    assert probe.ssh_seconds >= 1
    assert not _transports()


def test_a_name_that_does_not_resolve_is_its_own_reason() -> None:
    # Names that fail on this machine without a DNS query (checked with strace): glibc
    # refuses a name longer than 253 characters, Python's codec an empty label. A
    # plain `.invalid` name would be asked of the nameserver.
    checker = Checker(ProbeSettings(connect_timeout=1))
    too_long = ".".join(["a" * 60] * 5) + ".invalid"
    for name, why in ((too_long, "Name or service not known"), ("ap..invalid", "label empty")):
        started = time.monotonic()
        result = checker.check(ProbeTarget(TargetKind.AP, "ap-x", "school-1", name)).result
        assert time.monotonic() - started < 1
        assert not result.up
        assert result.reason.startswith("address does not resolve: "), result.reason
        assert why in result.reason
        assert len(result.reason) < 160


def _aps(count: int, port: int) -> list[ProbeTarget]:
    return [
        ProbeTarget(TargetKind.AP, f"ap-{i:02d}", "school-1", "127.0.0.1", "", port)
        for i in range(count)
    ]


@pytest.mark.e2e
def test_the_prober_probes_every_target_once_per_interval_at_its_offset() -> None:
    interval = 2.0
    results: list[ProbeResult] = []
    registry = CollectorRegistry()
    store_calls = ThreadPoolExecutor(2)

    async def scenario(port: int) -> float:
        targets = _aps(20, port)
        settings = ProbeSettings(interval=interval, concurrency=4, connect_timeout=1)
        prober = Prober(lambda: targets, results.extend, settings, store_calls, registry)
        first_full = cycle_start(time.time(), interval) + interval
        task = asyncio.create_task(prober.run())
        await asyncio.sleep(first_full + 2 * interval + 0.3 - time.time())
        await prober.close()
        await task
        return first_full

    try:
        with _silent_listener() as port:
            first_full = asyncio.run(scenario(port))
    finally:
        store_calls.shutdown()
    ids = {f"ap-{i:02d}" for i in range(20)}
    for start in (first_full, first_full + interval):
        in_cycle = [r for r in results if start <= r.probed_at < start + interval]
        assert sorted(r.target_id for r in in_cycle) == sorted(ids), start
        for r in in_cycle:
            assert abs(r.probed_at - start - offset(r.target_id, interval)) < 0.25, r
    # Before the first full cycle, only what was still due in the partial one.
    assert all(len([r for r in results if r.target_id == i]) in (2, 3) for i in ids)
    assert all(r.up and r.reason == "" for r in results)
    # The offsets of these 20 ids reach every quarter of the interval.
    assert {int(offset(i, interval) // (interval / 4)) for i in ids} == {0, 1, 2, 3}
    count = registry.get_sample_value(
        "schoolfleet_probe_duration_seconds_count", {"kind": "ap", "check": "tcp"}
    )
    assert count == len(results)


@pytest.mark.e2e
def test_a_probe_past_its_deadline_is_recorded_and_does_not_hold_the_others() -> None:
    release = threading.Event()
    settings = ProbeSettings(
        connect_timeout=0.1, banner_timeout=0.1, auth_timeout=0.1, command_timeout=0.1,
        concurrency=2,
    )  # fmt: skip
    real = Checker(settings)

    def check(target: ProbeTarget) -> Checked:
        if target.target_id == "ap-00":
            # Stands in for a resolver that does not answer: nothing here can be cut short.
            release.wait(30)
        return real.check(target)

    batches: list[Sequence[ProbeResult]] = []
    store_calls = ThreadPoolExecutor(1)

    async def scenario(port: int) -> tuple[float, float]:
        targets = _aps(10, port)
        prober = Prober(
            list, batches.append, settings, store_calls, CollectorRegistry(), check=check
        )
        started = time.monotonic()
        await prober.probe_now(targets)
        first = time.monotonic() - started
        # Its thread still runs: the target is not probed a second time meanwhile.
        started = time.monotonic()
        await prober.probe_now(targets)
        second = time.monotonic() - started
        release.set()
        await prober.close()
        return first, second

    try:
        with _silent_listener() as port:
            first, second = asyncio.run(scenario(port))
    finally:
        release.set()
        store_calls.shutdown()
    results = [r for batch in batches for r in batch]
    assert settings.deadline == pytest.approx(0.6)
    assert 0.6 <= first < 1.5
    # With one of two slots held by the stuck thread, nine probes still run.
    assert second < 1.0
    stuck = [r for r in results if r.target_id == "ap-00"]
    assert [(r.up, r.reason) for r in stuck] == [(False, "probe did not finish within 0.6s")]
    others = [r for r in results if r.target_id != "ap-00"]
    assert len(others) == 18
    assert all(r.up for r in others)


@pytest.mark.e2e
def test_closing_cuts_a_silent_target_s_probe_short_and_records_nothing_for_it() -> None:
    settings = ProbeSettings(connect_timeout=1, banner_timeout=10)
    batches: list[Sequence[ProbeResult]] = []
    store_calls = ThreadPoolExecutor(1)

    async def scenario(port: int) -> float:
        prober = Prober(list, batches.append, settings, store_calls, CollectorRegistry())
        mute = ProbeTarget(TargetKind.AP, "ap-mute", "school-1", "127.0.0.1", "root", port)
        probing = asyncio.create_task(prober.probe_now([mute, *_aps(3, port)]))
        await asyncio.sleep(0.5)
        started = time.monotonic()
        await prober.close()
        await probing
        return time.monotonic() - started

    try:
        with _silent_listener() as port:
            closing = asyncio.run(scenario(port))
    finally:
        store_calls.shutdown()
    assert closing < 1.0
    results = [r for batch in batches for r in batch]
    assert sorted(r.target_id for r in results) == ["ap-00", "ap-01", "ap-02"]
    assert not _transports()
