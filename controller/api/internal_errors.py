"""The last word on an exception no handler expected, for every gRPC method.

Left to gRPC, a handler's exception is answered UNKNOWN with Python's own text
("Unexpected <class 'OverflowError'>: ..."), which tells a caller about the
controller's insides. ``CatchAll`` answers INTERNAL with only a reference instead,
and logs the traceback once, under that reference, for whoever runs the controller.
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from controller.proxied.addresses import peer_of

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]


def answer(ref: str) -> str:
    """What a caller is told of an unexpected error: its reference, nothing else."""
    return f"internal error (ref {ref}): the controller's log has the details"


def logged(what: str, peer: str) -> str:
    """Inside an ``except``: logs the exception with its traceback under a new
    reference, and returns what the caller is told (``answer``)."""
    ref = uuid.uuid4().hex[:12]
    log.exception("unexpected error in %s peer=%s ref=%s", what, peer, ref)
    return answer(ref)


async def _internal(context: Context, method: str) -> None:
    await context.abort(grpc.StatusCode.INTERNAL, logged(method, peer_of(context)))


def _unary(behavior: Callable[..., Awaitable[Any]], method: str) -> Callable[..., Awaitable[Any]]:
    async def caught(request: Any, context: Context) -> Any:
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception:
            await _internal(context, method)
            raise AssertionError("abort returns only by raising") from None

    return caught


def _streaming(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behavior):

        async def caught_gen(requests: Any, context: Context) -> AsyncIterator[Any]:
            try:
                async for response in behavior(requests, context):
                    yield response
            except grpc.aio.AbortError:
                raise
            except Exception:
                await _internal(context, method)

        return caught_gen
    return _unary(behavior, method)


class CatchAll(grpc.aio.ServerInterceptor):
    """Turns any exception a method did not expect into INTERNAL with a reference."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        options = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _unary(handler.unary_unary, method), **options
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _streaming(handler.stream_stream, method), **options
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _streaming(handler.unary_stream, method), **options
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                _unary(handler.stream_unary, method), **options
            )
        return handler
