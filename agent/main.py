"""``schoolfleet-agent``: the device daemon's command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from agent import settings as agent_settings
from agent.errors import CollectError, EnrollUnreachable, SpoolError
from common.errors import SchoolFleetError
from common.logs import setup_logging

if TYPE_CHECKING:
    from agent.enroll import Credentials
    from agent.spool import Spool

log = logging.getLogger("agent")


def _parser() -> argparse.ArgumentParser:
    # argparse rather than typer: the agent runs on every device, so it imports little.
    parser = argparse.ArgumentParser(
        prog="schoolfleet-agent",
        description="SchoolFleet device agent: reports this device's health to the "
        "controller and keeps its stream open.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=agent_settings.DEFAULT_CONFIG,
        help="TOML file with the device's identity and settings "
        f"(default {agent_settings.DEFAULT_CONFIG}); any key may also come from "
        f"{agent_settings.ENV_PREFIX}<KEY>",
    )
    parser.add_argument("--controller", help="controller HOST:PORT (overrides the file)")
    parser.add_argument("--log-level", help="debug, info, warning or error")
    parser.add_argument(
        "--once",
        action="store_true",
        help="collect one report, print it and exit (does not contact the controller)",
    )
    parser.add_argument("--json", action="store_true", help="with --once: print JSON")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    return parser


def _version() -> str:
    """The installed package's version, from the Version field of its METADATA.

    Read directly, as importlib.metadata would find it on sys.path, because
    importlib.metadata loads email, zipfile and csv with it: ~1.7 MiB of every
    device's memory for one string (docs/benchmarks.md).
    """
    for entry in sys.path:
        for metadata in sorted(Path(entry or ".").glob("schoolfleet-*.dist-info/METADATA")):
            try:
                with metadata.open(encoding="utf-8", errors="replace") as lines:
                    for line in lines:
                        if line.startswith("Version:"):
                            return line.partition(":")[2].strip()
                        if not line.strip():
                            break  # the headers end at the first empty line
            except OSError:
                continue
    return "unknown"


def _open_spool(settings: agent_settings.AgentSettings) -> Spool:
    """The spool on disk; in memory (lost on restart) if the disk place is unusable."""
    from agent.spool import Spool

    try:
        spool = Spool(settings.spool_path, settings.device_id, settings.spool_max_bytes)
    except SpoolError as exc:
        log.error("%s; spooling in memory only until the agent restarts", exc)
        spool = Spool(Path(":memory:"), settings.device_id, settings.spool_max_bytes)
    stats = spool.stats()
    log.info(
        "spool opened path=%s pending=%d dropped=%d next_seq=%d",
        spool.path,
        stats.pending,
        stats.dropped,
        stats.next_seq,
    )
    return spool


async def _enrolled(
    settings: agent_settings.AgentSettings, stop: asyncio.Event
) -> Credentials | None:
    """The device's credentials, enrolling first if need be.

    Under TLS (ca_cert set) a device without a certificate cannot stream, so an
    unreachable controller is asked again with backoff until it answers or the agent
    stops; in plaintext it is asked once and the agent goes on without.
    """
    from agent.backoff import backoff_delay
    from agent.enroll import ensure_enrolled

    attempt = 0
    while True:
        try:
            return await asyncio.to_thread(ensure_enrolled, settings)
        except EnrollUnreachable as exc:
            if settings.ca_cert == Path():
                log.warning("%s; going on without a certificate", exc)
                return None
            delay = backoff_delay(attempt, settings.backoff_initial, settings.backoff_cap)
            attempt += 1
            log.warning("%s; retry_in=%.1fs attempt=%d", exc, delay, attempt)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                return None


async def _run(settings: agent_settings.AgentSettings) -> None:
    from agent.link import Link
    from agent.report import Reporter

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "agent started device=%s kind=%s school=%s room=%s controller=%s",
        settings.device_id,
        settings.kind,
        settings.school_id,
        settings.room_id,
        settings.controller,
    )
    # Before the stream: a device without a certificate trades its token for one.
    credentials = await _enrolled(settings, stop)
    if stop.is_set():
        log.info("agent stopped device=%s before it could enroll", settings.device_id)
        return
    if settings.ca_cert == Path():
        credentials = None  # no CA to check the controller with: plaintext
    elif credentials is None:
        log.error("ca_cert is set but the device has no certificate: the stream will be refused")
    spool = _open_spool(settings)
    link = Link(settings, Reporter(settings), spool, _version(), credentials)
    try:
        await link.run(stop)
    finally:
        # Everything not acked is committed already; closing folds the log into the file.
        stats = spool.stats()
        spool.close()
        log.info(
            "spool closed path=%s pending=%d dropped=%d next_seq=%d",
            spool.path,
            stats.pending,
            stats.dropped,
            stats.next_seq,
        )
    log.info("agent stopped device=%s", settings.device_id)


def _print_once(settings: agent_settings.AgentSettings, as_json: bool) -> None:
    import json
    import time
    from dataclasses import asdict

    from agent.link_messages import heartbeat_size
    from agent.report import Reporter
    from agent.report_limits import reported_interfaces

    reporter = Reporter(settings)
    # psutil's CPU figure needs an interval between the priming call and the reading.
    time.sleep(0.5)
    r = reporter.collect()
    report = {
        "device_id": settings.device_id,
        "kind": settings.kind.value,
        "school_id": settings.school_id,
        "room_id": settings.room_id,
        "controller": settings.controller,
        "agent_version": _version(),
        "status": r.condition.value,
        "reasons": r.reasons,
        "health": asdict(r.health),
        "system": asdict(r.facts),
        "network": asdict(r.network) if r.network else None,
        "network_error": r.network_error,
        # The interfaces the controller is sent (agent/report_limits.py says which).
        "reported_interfaces": [i.name for i in reported_interfaces(r.network)]
        if r.network
        else [],
        # What this report weighs as a Heartbeat message (gRPC adds 5 bytes of framing).
        "heartbeat_bytes": heartbeat_size(r),
    }
    if as_json:
        print(json.dumps(report, indent=2))
        return
    for key in ("device_id", "kind", "school_id", "room_id", "controller", "agent_version"):
        print(f"{key:16} {report[key]}")
    reasons = f" ({'; '.join(r.reasons)})" if r.reasons else ""
    print(f"{'status':16} {r.condition.value}{reasons}")
    for key, value in asdict(r.health).items():
        print(f"{key:16} {value}")
    facts = r.facts
    print(f"{'os':16} {facts.os_name or '-'} {facts.os_version or ''} (kernel {facts.kernel})")
    if r.network is None:
        print(f"{'network':16} not read: {r.network_error}")
        return
    for i in r.network.interfaces:
        print(f"{'interface':16} {i.name} {i.state} {i.mac} {' '.join(i.addresses)}")
    gateway, device = r.network.default_gateway, r.network.default_interface
    print(f"{'default route':16} via {gateway} dev {device}")
    print(f"{'wifi':16} {r.network.wifi_status}")


def run(argv: list[str] | None = None) -> None:
    """Console entry point."""
    args = _parser().parse_args(argv)
    try:
        # Lenient: a wrong value in the file must not take a classroom device off the
        # fleet, so it falls back to its default; only a missing identity stops us.
        settings, problems = agent_settings.load_lenient(
            args.config, {"controller": args.controller, "log_level": args.log_level}
        )
    except SchoolFleetError as exc:
        print(f"schoolfleet-agent: {exc}", file=sys.stderr)
        sys.exit(2)
    setup_logging(settings.log_level)
    for problem in problems:
        log.error("config problem: %s", problem)
    if args.once:
        try:
            _print_once(settings, args.json)
        except (OSError, CollectError) as exc:
            print(f"schoolfleet-agent: report not collected: {exc}", file=sys.stderr)
            sys.exit(1)
        return
    if not settings.tls:
        settings = dataclasses.replace(settings, ca_cert=Path())
    elif settings.ca_cert == Path():
        print(
            "schoolfleet-agent: 'ca_cert' is not set: the agent talks to the controller "
            "over TLS only; set ca_cert to the controller's CA certificate "
            "(tls = false only in a lab)",
            file=sys.stderr,
        )
        sys.exit(2)
    asyncio.run(_run(settings))
