"""The running controller's view of its pki directory, following changes on disk.

``schoolfleet-controller ca ...`` changes the files while the controller runs;
``refresh`` (called by the renewal watcher every ``ca_watch_interval``) reads them
again when their size or time changed. A half-written change (a CA key beside the
wrong certificate) is logged and the last good set kept until the next look.

The gRPC server's TLS credentials are dynamic: gRPC asks ``credentials``' fetcher
before every new connection's handshake, and it hands over a new configuration once
after each change. Streams already open keep the certificate they started with.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import grpc

from controller.enroll.ca_rotation import BUNDLE, NEXT_CERT, NEXT_KEY, CaSet, load_ca_set
from controller.enroll.pki import CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY, os_problem
from controller.errors import PkiError

log = logging.getLogger(__name__)

_WATCHED = (CA_KEY, CA_CERT, NEXT_KEY, NEXT_CERT, SERVER_KEY, SERVER_CERT, BUNDLE)
Signature = tuple[tuple[int, int, int] | None, ...]


class CaKeeper:
    """The CA set and the server's key and certificate, as last read from ``pki_dir``."""

    def __init__(self, pki_dir: Path) -> None:
        self.pki_dir = pki_dir
        self._lock = threading.Lock()
        self._signature: Signature | None = None
        self._cas: CaSet | None = None
        self._server: tuple[bytes, bytes] | None = None
        # Bumped at every change read; each credentials' fetcher remembers the last it gave.
        self.generation = 0

    @property
    def loaded(self) -> bool:
        """Whether a CA was ever read (never, in a lab without TLS)."""
        return self._cas is not None

    def cas(self) -> CaSet:
        """The CAs; read at first use. PkiError if they cannot be read."""
        with self._lock:
            if self._cas is None:
                self._load(self._stat())
            assert self._cas is not None
            return self._cas

    def refresh(self) -> bool:
        """Reads the files again if they changed; whether something new was taken."""
        signature = self._stat()
        with self._lock:
            if signature == self._signature:
                return False
            try:
                self._load(signature)
            except PkiError as exc:
                # Once per change of the files, not at every look.
                self._signature = signature
                if any(signature):
                    log.error("pki files not taken (the last good ones stay) reason=%s", exc)
                return False
        log.info(
            "pki files read cas=%d next_ca=%s generation=%d",
            len(self._cas.trusted) if self._cas else 0,
            "yes" if self._cas is not None and self._cas.next is not None else "no",
            self.generation,
        )
        return True

    def _load(self, signature: Signature) -> None:
        cas = load_ca_set(self.pki_dir)
        try:
            server = (
                (self.pki_dir / SERVER_KEY).read_bytes(),
                (self.pki_dir / SERVER_CERT).read_bytes(),
            )
        except OSError as exc:
            raise PkiError(os_problem("cannot read", exc, self.pki_dir)) from None
        self._cas, self._server, self._signature = cas, server, signature
        self.generation += 1

    def _stat(self) -> Signature:
        signature: list[tuple[int, int, int] | None] = []
        for name in _WATCHED:
            try:
                st = os.stat(self.pki_dir / name)
            except OSError:
                signature.append(None)
            else:
                signature.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(signature)

    def server_pem(self) -> bytes:
        """The server certificate (PEM) as last read; PkiError if it cannot be read."""
        self.cas()
        with self._lock:
            assert self._server is not None
            return self._server[1]

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        cas = self.cas()
        with self._lock:
            assert self._server is not None
            key, cert = self._server
        return grpc.ssl_server_certificate_configuration(
            [(key, cert)], root_certificates=cas.bundle_pem()
        )

    def credentials(self, *, mutual: bool) -> grpc.ServerCredentials:
        """Server credentials that take the files' changes for new connections; ``mutual``
        requires a client certificate from a trusted CA."""
        given = [self.generation]
        initial = self._configuration()
        given[0] = self.generation

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            # Called by gRPC before each handshake, on its own thread: no file I/O here.
            if self.generation == given[0]:
                return None
            given[0] = self.generation
            return self._configuration()

        return grpc.dynamic_ssl_server_credentials(
            initial,
            fetch,  # type: ignore[arg-type]  # gRPC documents None as "no change"; the stub does not
            require_client_authentication=mutual,
        )
