"""``schoolfleet-controller ca ...``: the CA's life after ``init``, with the controller running.

``add-next`` introduces a new CA beside the current one (trusted by both sides at
once, signing every new device certificate); ``status`` shows both and how far the
fleet has moved; ``retire-old`` makes the new CA the only one once every device
renewed onto it; ``server-cert`` signs a new server certificate for other names.
The running controller takes every change within ``ca_watch_interval`` seconds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from controller import settings as controller_settings
from controller.commands.options import Config, Database, DataDir, JsonOut, one_line_errors

if TYPE_CHECKING:
    from cryptography import x509

    from controller.enroll.cert_store import CertState

ca_app = typer.Typer(
    help="The controller's CA over the years: a next CA, the move to it, server names.",
    no_args_is_help=True,
)

# Devices named in a refusal or in status, at most.
_SHOWN = 10
# Who the audit log names for changes made on the controller's machine.
LOCAL_ACTOR = "controller-host"


@dataclass(frozen=True, slots=True)
class _Where:
    pki_dir: Path
    database: str


def _where(config: Path, data_dir: Path | None, database: str | None) -> _Where:
    settings = controller_settings.load(config, {"data_dir": data_dir, "database": database})
    return _Where(settings.data_dir.absolute() / "pki", settings.database)


def _run(
    work: Callable[[], dict[str, Any]], text: Callable[[dict[str, Any]], str], js: bool
) -> None:
    """Runs ``work``; a user's mistake or a refusal is one line on stderr and exit 2."""
    with one_line_errors():
        result = work()
    print(json.dumps(result, indent=2) if js else text(result))


def _audited(database: str, action: str, target: str, message: str) -> None:
    """Records a change of the CA files in the audit log, as made on this machine; a
    store that does not exist yet (the controller never ran) has no log to keep it."""
    import time

    from controller.store import sqlite_path
    from controller.stores import open_stores
    from inventory.people import AuditEntry, Outcome

    if not sqlite_path(database).is_file():
        return
    store = open_stores(database)
    try:
        store.people.append_audit(
            AuditEntry(
                0, time.time(), LOCAL_ACTOR, action, target, "", Outcome.OK, message, "local"
            )
        )
    finally:
        store.close()


def _cert_states(database: str) -> list[CertState]:
    from controller.errors import StoreError
    from controller.store import sqlite_path
    from controller.stores import open_stores

    # Never a new, empty store: an empty fleet would let retire-old strand every device.
    if not sqlite_path(database).is_file():
        raise StoreError(
            f"database {database} does not exist: give the controller's --database or --config"
        )
    store = open_stores(database)
    try:
        return store.enrollments.cert_states()
    finally:
        store.close()


def _ca_json(cert: x509.Certificate, role: str, signs: bool) -> dict[str, Any]:
    from controller.enroll.ca_rotation import ca_id
    from controller.enroll.pki import fingerprint

    return {
        "role": role,
        "subject": cert.subject.rfc4514_string(),
        "id": ca_id(cert),
        "fingerprint_sha256": fingerprint(cert),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "signs_device_certificates": signs,
    }


def _server_json(cert: x509.Certificate) -> dict[str, Any]:
    from controller.enroll.ca_rotation import server_names
    from controller.enroll.pki import fingerprint

    names, addresses = server_names(cert)
    return {
        "names": names,
        "addresses": addresses,
        "issuer": cert.issuer.rfc4514_string(),
        "fingerprint_sha256": fingerprint(cert),
        "not_after": cert.not_valid_after_utc.isoformat(),
    }


def _fleet(states: list[CertState], issuing_id: str) -> dict[str, Any]:
    live = [s for s in states if not s.revoked]
    behind = sorted(s.device_id for s in live if s.ca_id != issuing_id)
    return {
        "devices": len(live),
        "on_issuing_ca": len(live) - len(behind),
        "on_other_ca": len(behind),
        "renewal_pending": sum(1 for s in live if s.next_serial),
        "decommissioned": len(states) - len(live),
        "behind": behind[:_SHOWN],
    }


@ca_app.command("status")
def status(
    config: Config = controller_settings.DEFAULT_CONFIG,
    data_dir: DataDir = None,
    database: Database = None,
    json_output: JsonOut = False,
) -> None:
    """Show the CAs, the server certificate and how many devices each CA signed."""

    def work() -> dict[str, Any]:
        from controller.enroll.ca_rotation import load_ca_set, load_server_cert

        where = _where(config, data_dir, database)
        cas = load_ca_set(where.pki_dir)
        listed = [_ca_json(cas.current.certificate, "current", cas.next is None)]
        if cas.next is not None:
            listed.append(_ca_json(cas.next.certificate, "next", True))
        return {
            "pki_dir": str(where.pki_dir),
            "cas": listed,
            "server": _server_json(load_server_cert(where.pki_dir)),
            "fleet": _fleet(_cert_states(where.database), cas.issuing_id),
        }

    _run(work, _status_text, json_output)


def _status_text(r: dict[str, Any]) -> str:
    lines = [f"CAs in {r['pki_dir']}:"]
    for ca in r["cas"]:
        signs = ", signs device certificates" if ca["signs_device_certificates"] else ""
        lines.append(
            f"  {ca['role']:<7} {ca['subject']}  until {ca['not_after'][:10]}{signs}\n"
            f"          SHA-256 {ca['fingerprint_sha256']}"
        )
    s = r["server"]
    names = [*(f"DNS:{n}" for n in s["names"]), *(f"IP:{a}" for a in s["addresses"])]
    lines.append(f"server certificate for {', '.join(names)} until {s['not_after'][:10]}")
    f = r["fleet"]
    lines.append(
        f"devices: {f['devices']}, on the signing CA {f['on_issuing_ca']}, on another "
        f"{f['on_other_ca']}, renewal pending {f['renewal_pending']}, "
        f"decommissioned {f['decommissioned']}"
    )
    if len(r["cas"]) > 1:
        lines.append(
            "retire the old CA when no device is on it ('schoolfleet-controller ca retire-old')"
            if f["on_other_ca"]
            else "every device is on the next CA: 'schoolfleet-controller ca retire-old' is safe"
        )
    return "\n".join(lines)


@ca_app.command("add-next")
def add_next(
    config: Config = controller_settings.DEFAULT_CONFIG,
    data_dir: DataDir = None,
    database: Database = None,
    json_output: JsonOut = False,
) -> None:
    """Create a new CA beside the current one: both are trusted, and devices renew onto
    the new one (spread over ca_rotation_spread seconds)."""

    def work() -> dict[str, Any]:
        from controller.enroll import ca_rotation

        where = _where(config, data_dir, database)
        cas = ca_rotation.add_next(where.pki_dir)
        assert cas.next is not None
        _audited(where.database, "ca.add-next", ca_rotation.ca_id(cas.next.certificate), "next CA")
        return {
            **_ca_json(cas.next.certificate, "next", True),
            "bundle": str(where.pki_dir / ca_rotation.BUNDLE),
        }

    _run(
        work,
        lambda r: (
            f"next CA {r['subject']} created (SHA-256 {r['fingerprint_sha256']}); it signs "
            f"device certificates from now on, and devices renew onto it.\n"
            f"give schoolctl users {r['bundle']} (both CAs) before 'ca retire-old'"
        ),
        json_output,
    )


@ca_app.command("retire-old")
def retire_old(
    config: Config = controller_settings.DEFAULT_CONFIG,
    data_dir: DataDir = None,
    database: Database = None,
    strand: Annotated[
        bool,
        typer.Option(
            "--strand-devices",
            help="Retire even though devices still hold the old CA's certificates: "
            "they are refused and must enroll again.",
        ),
    ] = False,
    json_output: JsonOut = False,
) -> None:
    """Make the next CA the only one: the old one is no longer trusted and its key is
    deleted; the server certificate is signed again by the new CA for the same names."""

    def work() -> dict[str, Any]:
        from controller.enroll import ca_rotation
        from controller.errors import PkiError

        where = _where(config, data_dir, database)
        cas = ca_rotation.load_ca_set(where.pki_dir)
        if cas.next is None:
            raise PkiError(
                "there is no next CA to move to: add one first "
                "('schoolfleet-controller ca add-next')"
            )
        fleet = _fleet(_cert_states(where.database), cas.issuing_id)
        if fleet["on_other_ca"] and not strand:
            raise PkiError(
                f"{fleet['on_other_ca']} devices still hold certificates of the old CA "
                f"(e.g. {', '.join(fleet['behind'][:3])}): wait until they renew "
                "('ca status'), or pass --strand-devices to make them enroll again"
            )
        done = ca_rotation.retire_old(where.pki_dir)
        _audited(
            where.database,
            "ca.retire-old",
            ca_rotation.ca_id(done.retired),
            f"retired; {fleet['on_other_ca']} devices stranded",
        )
        return {
            "retired": _ca_json(done.retired, "retired", False),
            "current": _ca_json(done.current, "current", True),
            "server": _server_json(done.server),
            "retired_certificate": str(done.kept_as),
            "stranded_devices": fleet["on_other_ca"],
        }

    _run(
        work,
        lambda r: (
            f"retired {r['retired']['subject']} (certificate kept in "
            f"{r['retired_certificate']}, key deleted); {r['current']['subject']} is the "
            f"only CA and signed the new server certificate"
            + (
                f"; {r['stranded_devices']} devices must enroll again"
                if r["stranded_devices"]
                else ""
            )
        ),
        json_output,
    )


@ca_app.command("server-cert")
def server_cert(
    config: Config = controller_settings.DEFAULT_CONFIG,
    data_dir: DataDir = None,
    database: Database = None,
    name: Annotated[
        list[str] | None,
        typer.Option("--name", metavar="NAME", help="A DNS name; repeat for more."),
    ] = None,
    address: Annotated[
        list[str] | None,
        typer.Option("--address", metavar="IP", help="An IP address; repeat for more."),
    ] = None,
    json_output: JsonOut = False,
) -> None:
    """Sign a new server certificate (and key) for these names and addresses, by the
    current CA; without any, for the names the present one has (a renewal). Devices
    keep their certificates; the running controller uses it for new connections."""

    def work() -> dict[str, Any]:
        from controller.enroll.ca_rotation import reissue_server_cert

        where = _where(config, data_dir, database)
        signed = _server_json(reissue_server_cert(where.pki_dir, name or [], address or []))
        names = ", ".join([*signed["names"], *signed["addresses"]])
        _audited(where.database, "ca.server-cert", signed["fingerprint_sha256"], names[:500])
        return signed

    def text(r: dict[str, Any]) -> str:
        names = [*(f"DNS:{n}" for n in r["names"]), *(f"IP:{a}" for a in r["addresses"])]
        return (
            f"server certificate signed for {', '.join(names)} until {r['not_after'][:10]} "
            f"(SHA-256 {r['fingerprint_sha256']})"
        )

    _run(work, text, json_output)
