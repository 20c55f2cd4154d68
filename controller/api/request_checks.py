"""Checks on what arrives at the gRPC ports, before any handler sees it.

A device's stream message is decoded by ``decode``: over the size limit, or with a
number the store cannot hold or a time that is no time, it is refused with a status
that names the field. One-message requests (Enroll, the admin API) pass through
``UnaryRequestChecks`` for the same size limit and for bytes that do not decode.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from controller.api.field_ranges import INT64_MAX, time_problem
from controller.errors import MessageTooLarge, ProtocolError
from controller.proxied.addresses import peer_of
from protos.schoolfleet.v1 import agent_pb2

log = logging.getLogger(__name__)
ADMIN_PREFIX = "/schoolfleet.v1.AdminService/"


def decode(data: bytes, max_bytes: int) -> agent_pb2.AgentMessage:
    """An AgentMessage from a device's bytes: DecodeError, or ProtocolError naming the
    field, for what the controller must not take in."""
    if len(data) > max_bytes:
        raise MessageTooLarge(f"message of {len(data)} bytes is over the {max_bytes} limit")
    message = agent_pb2.AgentMessage.FromString(data)
    _check_ranges(message)
    return message


def _check_ranges(message: agent_pb2.AgentMessage) -> None:
    """Refuses integers the store cannot hold and Timestamps that are no time at all."""
    if message.seq > INT64_MAX:
        raise ProtocolError(f"AgentMessage.seq {message.seq} is out of range")
    body = message.WhichOneof("body")
    if body == "hello":
        _check_time(message.hello.os.boot_time, "Hello.os.boot_time")
    elif body == "heartbeat":
        _check_time(message.heartbeat.health.collected_at, "Health.collected_at")
        if message.heartbeat.spool.dropped > INT64_MAX:
            raise ProtocolError(
                f"SpoolStats.dropped {message.heartbeat.spool.dropped} is out of range"
            )
    elif body == "command_result":
        _check_time(message.command_result.finished_at, "CommandResult.finished_at")


def _check_time(ts: Timestamp, field: str) -> None:
    # SQLite keeps signed 64-bit integers and the admin API can send back only times
    # of the years 1 to 9999: the same limits as the admin requests' (field_ranges).
    why = time_problem(ts.seconds, ts.nanos, field)
    if why is not None:
        raise ProtocolError(why)


class _Refused:
    """A one-message request that is not passed to its method, and the answer instead."""

    __slots__ = ("code", "message")

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self.code = code
        self.message = message


class UnaryRequestChecks(grpc.aio.ServerInterceptor):
    """Answers a one-message request (Enroll, the admin API) that is over ``max_bytes`` or
    does not decode with RESOURCE_EXHAUSTED or INVALID_ARGUMENT and a log line.

    Left to gRPC, bytes that do not decode are answered UNKNOWN with a traceback in the
    log, as if the controller had failed; and it takes requests up to its own receive
    limit, four times max_message_bytes. Connect streams check their messages in
    ``decode`` instead, so that the handler can close them with a status.
    """

    def __init__(self, max_bytes: int, admin_max_bytes: int) -> None:
        self._max_bytes = max_bytes
        # schoolctl's requests: a schedule import sends many rows at once.
        self._admin_max_bytes = admin_max_bytes

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        return grpc.unary_unary_rpc_method_handler(
            _checked(handler.unary_unary, handler_call_details.method),
            request_deserializer=_checked_deserializer(
                handler.request_deserializer,
                handler_call_details.method,
                self._admin_max_bytes
                if handler_call_details.method.startswith(ADMIN_PREFIX)
                else self._max_bytes,
            ),
            response_serializer=handler.response_serializer,
        )


def _checked_deserializer(
    deserialize: Callable[[bytes], Any], method: str, max_bytes: int
) -> Callable[[bytes], Any]:
    def checked_deserialize(data: bytes) -> Any:
        if len(data) > max_bytes:
            return _Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request of {len(data)} bytes is over the {max_bytes} limit",
            )
        try:
            return deserialize(data)
        except DecodeError:
            return _Refused(
                grpc.StatusCode.INVALID_ARGUMENT, f"request is not a valid {_input_type(method)}"
            )

    return checked_deserialize


def _checked(behavior: Callable[..., Any], method: str) -> Callable[..., Awaitable[Any]]:
    async def checked_behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, _Refused):
            log.warning(
                "request refused method=%s peer=%s code=%s reason=%s",
                method,
                peer_of(context),
                request.code.name,
                request.message,
            )
            await context.abort(request.code, request.message)
        return await behavior(request, context)

    return checked_behavior


def _input_type(method: str) -> str:
    """``schoolfleet.v1.EnrollRequest`` for ``/schoolfleet.v1.AgentService/Enroll``."""
    try:
        found = descriptor_pool.Default().FindMethodByName(method.strip("/").replace("/", "."))
    except KeyError:
        return "request"
    return str(found.input_type.full_name)
