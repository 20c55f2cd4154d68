"""Assembles and runs the controller: store, writer, gRPC services, /metrics.

Shutdown order matters for "nothing acked is lost" and "no handler runs on what is
closed": tell every device stream the controller is restarting (with when to come
back) and stop accepting, wait until every stream handler has returned or
``shutdown_grace`` is over, let the writer store everything queued, and then, without
yielding to the event loop again, close the pools, record every stream's end in one
statement and close the store. The process exits right after (controller/main.py):
handlers the grace did not see end never run again, and their streams are cut by the
exit (gRPC would take ~0.3 ms of the event loop a call to unwind them).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from wsgiref.simple_server import WSGIServer
from zoneinfo import ZoneInfo

import grpc
from prometheus_client import CollectorRegistry, start_http_server

from controller.api.admin_enroll import EnrollAdmin
from controller.api.admin_fleet import FleetAdmin
from controller.api.admin_infra import InfraAdmin
from controller.api.admin_lessons import LessonAdmin
from controller.api.admin_people import PeopleAdmin
from controller.api.admin_rollouts import RolloutAdmin
from controller.api.admin_service import add_to_server as add_admin_service
from controller.api.admin_uplink import Ask, UplinkAdmin
from controller.api.agent_service import AgentService, Sessions, ack_sender
from controller.api.agent_service import add_to_server as add_agent_service
from controller.api.device_access import DeviceAccess
from controller.api.enroll import Enroller
from controller.api.grpc_logs import hide_metadata_values
from controller.api.guard import Guard
from controller.api.internal_errors import CatchAll
from controller.api.lesson_orders import RelayedPanels
from controller.api.renewal import Renewals
from controller.api.request_checks import UnaryRequestChecks
from controller.api.uplink_orders import SessionCourier
from controller.datadir.private_files import private_dir
from controller.enroll.ca_keeper import CaKeeper
from controller.enroll.metrics import CertCollector
from controller.errors import ConfigError, PkiError
from controller.fleet.acks import Acks
from controller.fleet.admission import restart_window
from controller.fleet.metrics import ControllerMetrics, FleetCollector
from controller.fleet.sessions import Closing, replica_stream_ids
from controller.fleet.writer import MessageWriter
from controller.infra.metrics import InfraCollector
from controller.infra.probe_check import ProbeSettings
from controller.infra.probes import ProbeMetrics, Prober
from controller.leases.keeper import LeaseMetrics, LeaseTiming
from controller.lessons.dispatcher import Dispatcher
from controller.lessons.metrics import LessonCollector, LessonMetrics
from controller.lessons.nudge import DispatchNudge
from controller.loops import LoopFailures
from controller.people import audit as audit_log
from controller.people.attempt_limits import FailureBudget
from controller.people.refusals import Refusals
from controller.proxied.addresses import CLIENTS, networks
from controller.proxied.front import FrontRefusals, ProxyFront
from controller.replicas import (
    PROBES,
    OnceRegistry,
    Replica,
    dispatch_once,
    gauges_once,
    replica,
)
from controller.rollouts.engine import EngineSettings, RolloutEngine
from controller.rollouts.metrics import RolloutCollector, RolloutMetrics
from controller.rollouts.os_user import rollout_dirs
from controller.rollouts.runner import RunnerSettings, default_forks
from controller.settings import ControllerSettings
from controller.stores import Stores, open_stores
from controller.uplink import across as uplink_across
from controller.uplink.checks import UplinkChecks, UplinkSettings
from controller.uplink.endpoint import UplinkServer
from controller.uplink.endpoint import serve as serve_uplink
from controller.uplink.metrics import UplinkCollector, UplinkMetrics
from controller.uplink.sql_tokens import SqlTokens
from controller.uplink.tokens import Tokens

log = logging.getLogger(__name__)
# A step of the stop (the checks, probes, rollouts, leased work, the dispatcher) that
# takes longer is left behind: well within systemd's 90 s stop timeout.
STOP_STEP_SECONDS = 10.0

# Calls beyond device streams that may run at once (schoolctl, scrapes of admin data).
_ADMIN_HEADROOM = 256
# gRPC's own stop is given the grace and this much more: longer than the process lives
# after the grace, so that gRPC never cancels (and unwinds) the calls itself.
_EXIT_AFTER = 60.0


def admin_request_max(settings: ControllerSettings) -> int:
    """The largest request the server takes at all: schoolctl's (a part of a schedule);
    a device's are held to max_message_bytes before they are decoded."""
    return max(4 * settings.max_message_bytes, 1024 * 1024)


def grpc_options(settings: ControllerSettings) -> list[tuple[str, int]]:
    """Server channel options: explicit message limits, keepalive that suits agents."""
    return [
        # A backstop only: AgentService checks max_message_bytes itself so that it can
        # say why it closes a stream; gRPC would just cancel it.
        ("grpc.max_receive_message_length", admin_request_max(settings)),
        ("grpc.max_send_message_length", 4 * 1024 * 1024),
        # A stale server from an earlier run must not silently share the port.
        ("grpc.so_reuseport", 0),
        # Agents ping every 30 s; allow that without answering GOAWAY too_many_pings.
        ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        # gRPC holds calls that arrived before the server took them (grpc.aio takes one
        # at a time, from its event loop); past 1,000 waiting it drops new ones at random,
        # and the device sees CANCELLED or INTERNAL before its Welcome while the
        # controller never hears of them. A restart storm is exactly that many: let them
        # wait their turn; refusing is the service's choice, with a status and a hint.
        ("grpc.server.max_pending_requests", settings.max_streams + _ADMIN_HEADROOM),
        ("grpc.server.max_pending_requests_hard_limit", settings.max_streams + _ADMIN_HEADROOM),
        # TLS records of at most 4 KiB: smaller buffers on every stream (an idle mutual-
        # TLS stream: 87 -> 81 KiB, docs/benchmarks.md); device messages are small.
        ("grpc.tsi.max_frame_size", 4096),
    ]


def _split(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def _write_ports(path: Path, ports: dict[str, int]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(ports))
    os.replace(tmp, path)


def _serve_metrics(listen: str, registry: CollectorRegistry) -> tuple[WSGIServer, threading.Thread]:
    host, port = _split(listen)
    try:
        return start_http_server(port, host, registry)
    except OSError as exc:
        raise ConfigError(f"metrics_listen {listen}: {exc.strerror}") from None


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def _add_ports(
    server: grpc.aio.Server, settings: ControllerSettings, keeper: CaKeeper
) -> dict[str, int]:
    """Plaintext on `listen`; or mutual TLS there and server-only TLS on `enroll_listen`,
    with credentials that follow `schoolfleet-controller ca ...`
    (controller/enroll/ca_keeper.py). Behind balancers (`proxy_from`) on loopback
    ports of their own instead, which the fronts pass the public ports' bytes to."""
    listen, enroll_listen = settings.listen, settings.enroll_listen
    if settings.proxy_from:
        listen = enroll_listen = "127.0.0.1:0"
    ports: dict[str, int] = {}
    try:
        if not settings.agent_tls:
            ports["grpc"] = server.add_insecure_port(listen)
            return ports
        try:
            mutual = keeper.credentials(mutual=True)
            enroll = keeper.credentials(mutual=False)
        except PkiError as exc:
            raise ConfigError(
                f"agent_tls: {exc} (run 'schoolfleet-controller init --data-dir "
                f"{settings.data_dir}' first)"
            ) from None
        ports["grpc"] = server.add_secure_port(listen, mutual)
        ports["enroll"] = server.add_secure_port(enroll_listen, enroll)
    except RuntimeError as exc:
        raise ConfigError(
            f"cannot bind {settings.listen} or {settings.enroll_listen} ({exc})"
        ) from None
    return ports


async def _start_fronts(
    settings: ControllerSettings, inner: dict[str, int], refusals: FrontRefusals
) -> tuple[dict[str, int], list[ProxyFront]]:
    """Behind balancers: a front on each public port, passing its connections to the
    gRPC server's loopback port (controller/proxied/front.py); the public ports."""
    if not settings.proxy_from:
        return inner, []
    listens = {"grpc": settings.listen, "enroll": settings.enroll_listen}
    ports: dict[str, int] = {}
    fronts: list[ProxyFront] = []
    proxies = networks(settings.proxy_from)
    for name, target in inner.items():
        host, port = _split(listens[name])
        front = ProxyFront(host, port, target, proxies, CLIENTS, refusals)
        try:
            ports[name] = await front.start()
        except OSError as exc:
            for started in fronts:
                await started.close()
            raise ConfigError(f"cannot bind {listens[name]} ({exc.strerror})") from None
        fronts.append(front)
    return ports, fronts


def _tune_gc() -> None:
    """Fewer garbage collections: +37-43% heartbeats/s stored (docs/benchmarks.md).

    Every heartbeat allocates a few short-lived containers, thousands per second,
    and each collection of the oldest generation walks every live stream, task and
    session. Objects from start-up are frozen out of collections, and the young
    generation is collected every 50,000 allocations instead of 700.
    """
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def _lessons(
    settings: ControllerSettings,
    stores: Stores,
    executor: ThreadPoolExecutor,
    part: Replica,
    registry: CollectorRegistry,
    once: OnceRegistry,
    failures: LoopFailures,
) -> tuple[LessonMetrics, DispatchNudge]:
    """The lesson figures, and the dispatcher that runs the schedule on the controller
    holding its lease (what the others use to wake it)."""
    if not settings.content_hosts:
        log.warning("content_hosts is empty: panels refuse every lesson's URL; set it")
    once.register(
        LessonCollector(
            stores.lesson_counts,
            stores.infra.school_ids,
            ZoneInfo(settings.timezone),
            on_time=settings.lesson_on_time,
        )
    )
    metrics = LessonMetrics(registry)
    dispatcher = Dispatcher(
        stores.lessons,
        executor,
        RelayedPanels(part.commands.send),
        failures,
        lead=settings.lesson_lead,
        settle=settings.lesson_settle,
        on_time=settings.lesson_on_time,
    )
    return metrics, dispatch_once(part, dispatcher)


def _rollouts(
    settings: ControllerSettings,
    stores: Stores,
    executor: ThreadPoolExecutor,
    part: Replica,
    registry: CollectorRegistry,
    once: OnceRegistry,
    failures: LoopFailures,
) -> tuple[RolloutEngine, RunnerSettings]:
    """The rollout engine and how it runs Ansible; rollouts driven by the controller
    holding their lease, the others telling it through the bus."""
    once.register(RolloutCollector(stores.rollouts))
    # Ansible writes as its own OS user, outside data_dir; the engine removes the
    # control sockets' folder when it closes.
    ansible_dir, control_dir = rollout_dirs(
        settings.rollout_os_user, settings.rollout_work_dir, settings.data_dir
    )
    runner = RunnerSettings(
        forks=settings.rollout_forks or default_forks(),
        remote_user=settings.rollout_ssh_user,
        python_interpreter=settings.rollout_python,
        private_key_file=settings.ssh_key,
        known_hosts=settings.known_hosts,
        control_path_dir=control_dir,
        timeout=settings.rollout_wave_timeout,
        os_user=settings.rollout_os_user,
        strategy=settings.rollout_strategy,
    )
    engine = RolloutEngine(
        stores.rollouts,
        stores.slices,
        stores.devices.devices_by_id,
        executor,
        runner,
        EngineSettings(
            playbooks_dir=settings.playbooks_dir,
            work_dir=settings.data_dir / "rollouts",
            ansible_dir=ansible_dir,
            zone=ZoneInfo(settings.timezone),
            batch_estimate=settings.rollout_batch_estimate,
            recheck=settings.rollout_recheck,
            gate_days=settings.rollout_gate_days,
            lesson_on_time=settings.lesson_on_time,
            slice_hosts=settings.rollout_slice_hosts,
            slots=settings.rollout_slots or max(1, (os.cpu_count() or 1) // 2),
            claim_ttl=part.timing.ttl,
            claim_renew=part.timing.renew_every,
        ),
        RolloutMetrics(registry),
        failures,
        holder=part.name,
        bus=part.bus,
    )
    part.keeper(RolloutEngine.LEASE, engine.hold)
    return engine, runner


@dataclass
class _Uplink:
    """The uplink endpoint on its thread, and the checks' schedule running."""

    checks: UplinkChecks
    http: UplinkServer
    thread: threading.Thread
    schedule: asyncio.Task[None]

    async def close(self) -> None:
        """Stops the schedule; checks running are recorded as failed. The endpoint
        answers until the process exits (its thread is a daemon): stopping it first
        would only wait for its 0.5 s poll."""
        self.schedule.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.schedule
        await self.checks.close()


def _uplink(
    settings: ControllerSettings,
    stores: Stores,
    executor: ThreadPoolExecutor,
    sessions: Sessions,
    registry: CollectorRegistry,
    once: OnceRegistry,
    failures: LoopFailures,
) -> _Uplink:
    """Starts the uplink endpoint and the checks' schedule (no stream is up yet: the
    first look finds no school to check). Transfer tokens are kept in the store, so that
    a device's fetch may reach any controller sharing it."""
    tokens: Tokens = SqlTokens(stores.sql)
    http, thread = serve_uplink(settings.uplink_listen, tokens)
    once.register(UplinkCollector(stores.uplink, stores.infra.school_ids))
    checks = UplinkChecks(
        stores.uplink,
        stores.devices,
        executor,
        SessionCourier(sessions),
        tokens,
        UplinkMetrics(registry),
        UplinkSettings(
            interval=settings.uplink_interval,
            concurrency=settings.uplink_concurrency,
            bytes=settings.uplink_bytes,
            timeout=settings.uplink_timeout,
            port=http.port,
        ),
        failures,
    )
    schedule = asyncio.create_task(checks.run(), name="uplink-checks")
    return _Uplink(checks, http, thread, schedule)


@dataclass
class _Probes:
    """The probe schedule, if probe_interval is not 0 (run under its lease)."""

    prober: Prober | None = None

    async def close(self) -> None:
        """Cuts the probes running short and stores the results gathered."""
        if self.prober is not None:
            await self.prober.close()


def _probes(
    settings: ControllerSettings,
    stores: Stores,
    executor: ThreadPoolExecutor,
    part: Replica,
    registry: CollectorRegistry,
    failures: LoopFailures,
) -> _Probes:
    """Probes the access points and servers of the inventory, on the controller holding
    the probes' lease."""
    if not settings.probe_interval:
        # Probes off: the family is still exported (empty), as the catalogue lists it.
        ProbeMetrics(registry)
        return _Probes()
    probe = ProbeSettings(
        connect_timeout=settings.probe_connect_timeout,
        banner_timeout=settings.probe_banner_timeout,
        auth_timeout=settings.probe_auth_timeout,
        command_timeout=settings.probe_command_timeout,
        private_key_file=settings.ssh_key,
        concurrency=settings.probe_concurrency,
        interval=settings.probe_interval,
    )
    prober = Prober(
        stores.infra.probe_targets,
        stores.infra.record_probes,
        probe,
        executor,
        registry,
        failures=failures,
    )
    part.keeper(PROBES, prober.run)
    return _Probes(prober)


async def _within(what: str, step: Awaitable[object], seconds: float = STOP_STEP_SECONDS) -> None:
    """A step of the stop, left behind (said in the log, with where every task still
    running waits) when it does not end within ``seconds``: the controller still
    stores what it holds and exits, rather than wait for systemd's SIGKILL."""
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if task in done:
        task.result()
        return
    waiting = []
    for other in asyncio.all_tasks():
        if other is not asyncio.current_task() and not other.done():
            frames = other.get_stack(limit=1)
            where = f"{frames[0].f_code.co_filename}:{frames[0].f_lineno}" if frames else "?"
            waiting.append(f"{other.get_name()}@{where}")
    log.error(
        "controller stop: %s did not end within %g s; going on without it (waiting: %s)",
        what,
        seconds,
        ", ".join(sorted(waiting))[:2000],
    )


async def _stop_serving(
    server: grpc.aio.Server,
    agent_service: AgentService,
    grace: float,
    streams: int,
    writer: MessageWriter,
) -> asyncio.Task[None]:
    """Ends every device stream with word of the restart and stops accepting calls;
    returns once every stream handler has, or after ``grace``: the streams still open
    then are cut when the process exits. Returns gRPC's own stop, left running (the
    caller holds it until the exit)."""
    window = restart_window(streams)
    log.info(
        "controller stopping streams=%d queued=%d retry_within=%.0f-%.0fs",
        streams,
        writer.pending(),
        window.low,
        window.high,
    )
    # Refuses new calls and sends every connection GOAWAY. Its own grace outlasts the
    # process: gRPC never cancels the calls itself, which would take seconds of the
    # event loop to unwind with thousands of streams. Not awaited for the same reason.
    stopping = asyncio.create_task(server.stop(grace + _EXIT_AFTER))
    closing = Closing("shutdown", grpc.StatusCode.UNAVAILABLE, "controller is restarting", window)
    untold = await agent_service.stop_streams(closing, grace)
    if untold:
        log.info(
            "streams not told within the grace count=%d grace_s=%g (the exit cuts them; "
            "their devices come back over the spread their Welcome named)",
            untold,
            grace,
        )
    return stopping


def _store_gauges(stores: Stores, once: OnceRegistry) -> None:
    """The gauges read from the store at scrape: devices, access points and servers."""
    school_ids = stores.infra.school_ids
    once.register(FleetCollector(stores.devices, school_ids))
    once.register(InfraCollector(stores.infra, school_ids))


# The assembly reads in order (its order is the shutdown's contract); its parts are
# helpers already.
def _admin_handlers(
    stores: Stores,
    guard: Guard,
    sessions: Sessions,
    settings: ControllerSettings,
    *,
    dispatcher: DispatchNudge,
    zone: ZoneInfo,
    rollouts: RolloutEngine,
    runner: RunnerSettings,
    uplink: UplinkChecks,
    send_command: Callable[[str, bytes], None],
    ask: Ask | None,
) -> list[object]:
    """AdminService's handler objects, one per feature, each given what it uses."""
    devices = DeviceAccess(guard, stores.enrollments, stores.devices)
    uplinks = UplinkAdmin(guard, stores.uplink, uplink, settings.uplink_target_mbps, ask)
    return [
        FleetAdmin(
            guard,
            stores.devices,
            devices,
            sessions,
            send_command,
            uplinks.slow_uplinks,
            settings.uplink_target_mbps,
        ),
        EnrollAdmin(guard, stores.enrollments, devices, sessions),
        PeopleAdmin(guard, stores.people),
        LessonAdmin(guard, stores.lessons, dispatcher, settings.content_hosts, zone),
        RolloutAdmin(
            guard, stores.rollouts, stores.devices, rollouts, settings.playbooks_dir, runner
        ),
        uplinks,
        InfraAdmin(guard, stores.infra, stores.lessons),
    ]


async def serve(settings: ControllerSettings) -> None:  # noqa: PLR0915
    """Runs the controller until SIGTERM or SIGINT, then shuts down gracefully."""
    hide_metadata_values()
    # Whatever the umask it was started with: what it writes is its own
    # (controller/datadir/private_files.py); files others may read (ca.crt) are given
    # their mode explicitly.
    os.umask(0o077)
    try:
        private_dir(settings.data_dir)
    except OSError as exc:
        raise ConfigError(f"data_dir {settings.data_dir}: {exc.strerror}") from None
    stores = open_stores(settings.database, settings.database_connections)
    # The pools of controller/offload.py's model.
    write_executor = ThreadPoolExecutor(1, thread_name_prefix="ingest-writer")
    read_executor = ThreadPoolExecutor(4, thread_name_prefix="store")
    if not stores.shared:
        # Alone on its store: no stream and no lease holder from before the restart
        # is still up.
        stale = stores.devices.reset_streams()
        if stale:
            log.info("streams from before the restart marked down count=%d", stale)
        stores.leases.forget_holders()
        stores.slices.forget_slice_claims()

    registry = CollectorRegistry()
    metrics = ControllerMetrics(registry)
    failures = LoopFailures(registry)
    sessions: Sessions = Sessions(ids=replica_stream_ids())
    metrics.connected_streams.set_function(lambda: len(sessions))
    part = replica(
        stores,
        sessions,
        read_executor,
        LeaseMetrics(registry),
        LeaseTiming(
            ttl=settings.lease_seconds,
            renew_every=settings.lease_seconds / 5,
            margin=settings.lease_seconds / 10,
        ),
    )
    once = OnceRegistry(registry, gauges_once(part))
    _store_gauges(stores, once)
    zone = ZoneInfo(settings.timezone)
    lesson_metrics, dispatcher = _lessons(
        settings, stores, read_executor, part, registry, once, failures
    )
    audit = audit_log.appender(stores.people, read_executor)
    # Refused sign-ins and enrollments: limited and folded per source address.
    refusals = Refusals(audit, FailureBudget(settings.refused_per_minute, settings.refused_burst))
    keeper = CaKeeper(settings.data_dir / "pki")
    once.register(CertCollector(keeper, stores.enrollments, settings.device_cert_lifetime))
    enroller = Enroller(
        keeper,
        stores.enrollments,
        stores.devices.get_device,
        refusals.sink(audit),
        refusals,
        lifetime=settings.device_cert_lifetime,
    )
    renewals = Renewals(
        keeper,
        stores.enrollments,
        audit,
        sessions,
        lifetime=settings.device_cert_lifetime,
        spread=settings.ca_rotation_spread,
    )
    uplink = _uplink(settings, stores, read_executor, sessions, registry, once, failures)
    part.asking.answer(uplink_across.KIND, uplink_across.answering(uplink.checks))
    rollouts, runner = _rollouts(settings, stores, read_executor, part, registry, once, failures)
    acks = Acks(settings.ack_interval, ack_sender(sessions))
    writer = MessageWriter(
        stores.devices,
        write_executor,
        flush_interval=settings.flush_interval,
        batch_max=settings.batch_max,
        queue_max=settings.queue_max,
        on_stored=acks.stored,
        on_flush=metrics.observe_flush,
        on_lesson_events=lesson_metrics.observe_all,
    )
    agent_service = AgentService(
        settings,
        stores.devices,
        stores.enrollments,
        stores.lessons.pending_commands,
        write_executor,
        sessions,
        metrics,
        enroller,
        renewals=renewals,
        writer=writer,
        acks=acks,
        on_uplink_answer=uplink.checks.answered,
        fleet_size=sum(c.online + c.offline for c in stores.devices.fleet_counts(time.time())),
    )

    server = grpc.aio.server(
        options=grpc_options(settings),
        maximum_concurrent_rpcs=settings.max_streams + _ADMIN_HEADROOM,
        interceptors=[
            CatchAll(),
            UnaryRequestChecks(settings.max_message_bytes, admin_request_max(settings)),
        ],
    )
    add_agent_service(agent_service, server, settings.max_message_bytes)
    add_admin_service(
        _admin_handlers(
            stores,
            Guard(stores.people, read_executor, metrics.count_denied, refusals=refusals),
            sessions,
            settings,
            dispatcher=dispatcher,
            zone=zone,
            rollouts=rollouts,
            runner=runner,
            uplink=uplink.checks,
            send_command=part.commands.send,
            # Alone on its store, a controller has nobody to ask.
            ask=part.asking.ask if stores.shared else None,
        ),
        server,
    )
    # The fronts listen before anything starts, so a port taken fails the start cleanly;
    # what they pass on waits in the gRPC server's backlog until it serves.
    # Its figures exported with or without a front: 0 is a true count without one.
    front_refusals = FrontRefusals(registry)
    ports, fronts = await _start_fronts(
        settings, _add_ports(server, settings, keeper), front_refusals
    )
    grpc_port = ports["grpc"]
    http_server, _ = _serve_metrics(settings.metrics_listen, registry)
    metrics_port = http_server.server_port
    probes = _probes(settings, stores, read_executor, part, registry, failures)
    # Listening to the other controllers before serving: nothing relayed is missed.
    await part.start()
    part.spawn(rollouts.serve())
    await server.start()
    _tune_gc()
    writer_task = asyncio.create_task(writer.run(), name="heartbeat-writer")
    acks_task = asyncio.create_task(acks.run(), name="acks")
    refusals_task = asyncio.create_task(refusals.run(), name="refusals")
    pki_task = asyncio.create_task(renewals.watch(settings.ca_watch_interval), name="pki-watch")
    if settings.ports_file != Path():
        _write_ports(
            settings.ports_file, {**ports, "metrics": metrics_port, "uplink": uplink.http.port}
        )
    log.info(
        "controller started grpc=%s:%d metrics=%s:%d uplink=%s:%d database=%s",
        _split(settings.listen)[0],
        grpc_port,
        _split(settings.metrics_listen)[0],
        metrics_port,
        _split(settings.uplink_listen)[0],
        uplink.http.port,
        # Its name: a PostgreSQL URL may carry a password.
        stores.name,
    )

    await _until_signalled()

    stopping = time.monotonic()
    # Beside the streams: checks running now are recorded as failed, probes done and
    # where rollouts were are stored, while the store is still open; the rollouts' SSH
    # masters take a process of their own. The HTTP endpoints (/metrics, uplink) answer
    # until the exit ends their daemon threads: stopping them would only wait for their
    # 0.5 s poll.
    others = asyncio.gather(uplink.close(), probes.close(), rollouts.close())
    server_stopping = await _stop_serving(
        server, agent_service, settings.shutdown_grace, len(sessions), writer
    )
    streams_ended = time.monotonic() - stopping
    for front in fronts:
        await front.close()
    await _within("the uplink checks, probes and rollouts", others)
    # Leased work stopped and its leases given up: another controller takes them now.
    await _within("the leased work", part.close())
    await _within("the lesson dispatcher", dispatcher.close())
    await writer.close()
    await writer_task
    for task in (acks_task, refusals_task, pki_task):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await refusals.close()
    # From here nothing yields to the event loop until the process exits: a handler the
    # grace did not see end never reaches the pools or the store closed below, and its
    # stream is cut by the exit (the device comes back over its Welcome's spread).
    cut = agent_service.running
    write_executor.shutdown(wait=True)
    read_executor.shutdown(wait=True)
    # After the writer's last batch: every stream's end, in one statement (this
    # controller's streams only: others may share the store).
    ended = stores.devices.reset_streams(sessions.ids)
    stores.close()
    log.info(
        "controller stopped stream_ends_recorded=%d streams_cut=%d streams_s=%.2f total_s=%.2f",
        ended,
        cut,
        streams_ended,
        time.monotonic() - stopping,
    )
    del server_stopping  # left to the exit, with the streams it did not see end
