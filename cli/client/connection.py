"""The connection every feature's client shares: one channel to the controller, its
AdminService stub, the caller's token, and the one place gRPC errors become CliErrors."""

from __future__ import annotations

import os
from typing import TypeVar, cast

import grpc

from cli.config import config_path
from cli.errors import (
    CliError,
    ControllerUnreachable,
    DeviceUnavailable,
    NotAllowed,
    NotFound,
    NotLoggedIn,
    RequestRefused,
)
from protos.schoolfleet.v1 import admin_pb2_grpc

_MAX_MESSAGE = 16 * 1024 * 1024
# Requests are a few ids and filters, or a part of a schedule or inventory (cli/imports.py
# sends at most 512 KiB of rows at once; the controller takes up to 1 MiB).
_MAX_SEND = 1024 * 1024
Req = TypeVar("Req")
Resp = TypeVar("Resp")


def _why_unreachable(code: grpc.StatusCode, details: str) -> str:
    """gRPC's connection details run to several lines; a user needs a few words."""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "no answer in time"
    for needle, words in (
        ("Connection refused", "connection refused"),
        ("DNS resolution failed", "name does not resolve"),
        ("Timeout occurred", "connection timed out"),
    ):
        if needle in details:
            return words
    return details.splitlines()[0][:120] if details else "unavailable"


# The controller's refusals whose details are already the line a user should read.
_ERRORS: dict[grpc.StatusCode, type[CliError]] = {
    grpc.StatusCode.PERMISSION_DENIED: NotAllowed,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: RequestRefused,
    grpc.StatusCode.ALREADY_EXISTS: RequestRefused,
    grpc.StatusCode.FAILED_PRECONDITION: DeviceUnavailable,
}


class Connection:
    """One controller's AdminService over one channel; every failure becomes a CliError."""

    def __init__(
        self,
        address: str,
        timeout: float,
        ca_cert: bytes | None = None,
        token: str | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        options = [
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.max_send_message_length", _MAX_SEND),
        ]
        if ca_cert is None:
            self._channel = grpc.insecure_channel(address, options=options)
        else:
            tls = grpc.ssl_channel_credentials(root_certificates=ca_cert)
            self._channel = grpc.secure_channel(address, tls, options=options)
        self.stub = admin_pb2_grpc.AdminServiceStub(self._channel)

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()

    def call(self, rpc: grpc.UnaryUnaryMultiCallable[Req, Resp], request: Req) -> Resp:
        """``rpc(request)`` with the timeout and token; a failure raised as a CliError."""
        try:
            return rpc(request, timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise self.error(exc) from None

    def error(self, exc: grpc.RpcError) -> CliError:
        """The CliError a user should read for a failed call."""
        # Errors raised by a call are also grpc.Call objects, which the stubs cannot express.
        call = cast(grpc.Call, exc)
        code = call.code()
        details = call.details() or code.name
        if not self.metadata:
            # Without a token nothing is answered: that, not the port, is what to fix
            # (with no login file the default address is often not the admin port).
            return self._not_logged_in(code)
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            why = _why_unreachable(code, details)
            return ControllerUnreachable(
                f"cannot reach the controller at {self.address} ({why}); "
                "is it running? (set --controller or SCHOOLCTL_CONTROLLER)"
            )
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return NotAllowed(
                f"the controller at {self.address} did not accept your token ({details}); "
                "get one from central ops and run 'schoolctl login'"
            )
        kind = _ERRORS.get(code)
        if kind is not None:
            return kind(details)
        return CliError(f"controller at {self.address} answered {code.name}: {details}")

    def _not_logged_in(self, code: grpc.StatusCode) -> NotLoggedIn:
        unanswered = code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        return NotLoggedIn(
            f"not logged in: no token in $SCHOOLCTL_TOKEN or {config_path(os.environ)}; "
            "run 'schoolctl --controller HOST:PORT --ca-cert CA_CERT login' with a token "
            "from central ops"
            + (f" (and the controller at {self.address} did not answer)" if unanswered else "")
        )
