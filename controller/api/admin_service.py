"""AdminService: what schoolctl asks of the controller, one handler object per feature.

Every method is ``guarded`` (controller/api/guard.py): the caller's token, role and
schools are checked, and changes and denials go to the audit log. The service is not a
class of its own: each feature's handler object brings its methods, and the service is
registered from them, every method of the contract answered by exactly one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import SimpleNamespace
from typing import Any, cast

import grpc

from protos.schoolfleet.v1 import admin_pb2, admin_pb2_grpc

SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]


def admin_methods(handlers: Iterable[object]) -> dict[str, Callable[..., Any]]:
    """Each of the contract's methods with the one handler object's method that answers
    it; a method answered twice, or by none, is our bug, found at start."""
    names = [m.name for m in SERVICE.methods]
    found: dict[str, Callable[..., Any]] = {}
    for handler in handlers:
        for name in names:
            method = getattr(handler, name, None)
            if method is None:
                continue
            if name in found:
                raise TypeError(f"AdminService.{name} is answered twice ({type(handler).__name__})")
            found[name] = method
    missing = sorted(set(names) - found.keys())
    if missing:
        raise TypeError(f"AdminService methods nobody answers: {', '.join(missing)}")
    return found


def add_to_server(handlers: Iterable[object], server: grpc.aio.Server) -> None:
    """Registers the admin API on ``server``, each method from its feature's handler."""
    servicer = SimpleNamespace(**admin_methods(handlers))
    admin_pb2_grpc.add_AdminServiceServicer_to_server(
        cast(admin_pb2_grpc.AdminServiceServicer, servicer), server
    )
