"""An exception no handler expected: INTERNAL with a reference, the traceback logged once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from controller.api.internal_errors import CatchAll

INSIDES = "the-ca-key-lives-at-/srv/ca.key"


async def _unary(request: bytes, context: Any) -> bytes:
    raise OverflowError(f"Python int too large ({INSIDES})")


async def _stream(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for _ in requests:
        yield b"one"
        raise KeyError(INSIDES)


async def _aborts(request: bytes, context: Any) -> bytes:
    await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    raise AssertionError


def _handlers() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        "t.T",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary),
            "Stream": grpc.stream_stream_rpc_method_handler(_stream),
            "Aborts": grpc.unary_unary_rpc_method_handler(_aborts),
        },
    )


async def _calls() -> list[tuple[grpc.StatusCode, str]]:
    server = grpc.aio.server(interceptors=[CatchAll()], options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((_handlers(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    got = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for name in ("Unary", "Aborts"):
                unary: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                    f"/t.T/{name}"
                )
                try:
                    await unary(b"x")
                except grpc.aio.AioRpcError as exc:
                    got.append((exc.code(), exc.details() or ""))
            method: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(
                "/t.T/Stream"
            )
            call = method(iter([b"x"]))
            try:
                async for _ in call:
                    pass
            except grpc.aio.AioRpcError as exc:
                got.append((exc.code(), exc.details() or ""))
    finally:
        await server.stop(None)
    return got


def test_unexpected_exceptions_answer_internal_without_internals(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, "controller.api.internal_errors"):
        got = asyncio.run(_calls())
    unary, aborted, stream = got
    assert aborted == (grpc.StatusCode.NOT_FOUND, "no such thing")
    for code, details in (unary, stream):
        assert code == grpc.StatusCode.INTERNAL
        assert details.startswith("internal error (ref ") and INSIDES not in details, details
    # Logged once each, with the traceback, under the reference the caller was given.
    records = [r for r in caplog.records if r.name == "controller.api.internal_errors"]
    assert len(records) == 2 and all(r.exc_info for r in records)
    for record, (_, details) in zip(records, (unary, stream), strict=True):
        assert details.split("ref ")[1].split(")")[0] in record.getMessage()
