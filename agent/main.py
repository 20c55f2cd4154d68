"""``schoolfleet-agent``: the device daemon's command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from agent import settings as agent_settings
from agent.errors import CollectError
from common.errors import SchoolFleetError
from common.logs import setup_logging

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
    try:
        return version("schoolfleet")
    except PackageNotFoundError:
        return "unknown"


async def _run(settings: agent_settings.AgentSettings) -> None:
    from agent.health import HealthCollector
    from agent.link import Link

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    link = Link(settings, HealthCollector(settings.disk_path), _version())
    log.info(
        "agent started device=%s kind=%s school=%s room=%s controller=%s",
        settings.device_id,
        settings.kind,
        settings.school_id,
        settings.room_id,
        settings.controller,
    )
    await link.run(stop)
    log.info("agent stopped device=%s", settings.device_id)


def _print_once(settings: agent_settings.AgentSettings, as_json: bool) -> None:
    import json
    import time
    from dataclasses import asdict

    from agent.health import HealthCollector
    from agent.network import read_network
    from agent.status import Thresholds, assess
    from agent.system import SystemCollector

    collector = HealthCollector(settings.disk_path)
    system = SystemCollector(settings.kiosk_program)
    # psutil's CPU figure needs an interval between the priming call and the reading.
    time.sleep(0.5)
    health, facts, network = collector.collect(), system.collect(), read_network()
    status, reasons = assess(health, facts, network, Thresholds())
    report = {
        "device_id": settings.device_id,
        "kind": settings.kind.value,
        "school_id": settings.school_id,
        "room_id": settings.room_id,
        "controller": settings.controller,
        "agent_version": _version(),
        "status": status,
        "reasons": reasons,
        "health": asdict(health),
        "system": asdict(facts),
        "network": asdict(network),
    }
    if as_json:
        print(json.dumps(report, indent=2))
        return
    for key in ("device_id", "kind", "school_id", "room_id", "controller", "agent_version"):
        print(f"{key:16} {report[key]}")
    print(f"{'status':16} {status}" + (f" ({'; '.join(reasons)})" if reasons else ""))
    for key, value in asdict(health).items():
        print(f"{key:16} {value}")
    print(f"{'os':16} {facts.os_name or '-'} {facts.os_version or ''} (kernel {facts.kernel})")
    for i in network.interfaces:
        print(f"{'interface':16} {i.name} {i.state} {i.mac} {' '.join(i.addresses)}")
    print(f"{'default route':16} via {network.default_gateway} dev {network.default_interface}")
    print(f"{'wifi':16} {network.wifi_status}")


def run(argv: list[str] | None = None) -> None:
    """Console entry point."""
    args = _parser().parse_args(argv)
    try:
        settings = agent_settings.load(
            args.config, {"controller": args.controller, "log_level": args.log_level}
        )
    except SchoolFleetError as exc:
        print(f"schoolfleet-agent: {exc}", file=sys.stderr)
        sys.exit(2)
    setup_logging(settings.log_level)
    if args.once:
        try:
            _print_once(settings, args.json)
        except (OSError, CollectError) as exc:
            print(f"schoolfleet-agent: report not collected: {exc}", file=sys.stderr)
            sys.exit(1)
        return
    asyncio.run(_run(settings))
