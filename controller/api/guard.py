"""Every AdminService call passes here: who is calling, may they, and the audit log.

A handler is wrapped with ``guarded(action, need, audited)``. The wrapper finds the
caller from the bearer token (UNAUTHENTICATED without a valid one), refuses a role
that cannot do the action before the handler runs, and gives the handler a ``Call``
whose ``allow`` checks the target's school. Handlers raise ``Refused`` instead of
aborting, so that every denial, and every outcome of a change, is appended to the
audit log in one place.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from controller.api import internal_errors
from controller.api.field_ranges import out_of_range
from controller.errors import ProtocolError, StoreError
from controller.offload import Offload
from controller.people import access
from controller.people.access import Caller, Need
from controller.people.refusals import Refusals
from controller.people.store import AccessStore
from controller.proxied.addresses import peer_of
from inventory.people import AuditEntry, Outcome, User

log = logging.getLogger(__name__)
T = TypeVar("T")
Req = TypeVar("Req")
Resp = TypeVar("Resp")
Context = grpc.aio.ServicerContext[Any, Any]

NO_ACTOR = "-"
# What refused bearer tokens are folded and limited as, per source.
SIGN_IN = "sign-in"
_MISSING = "no bearer token: run 'schoolctl login' (or set SCHOOLCTL_TOKEN)"
_NOT_ACCEPTED = "the bearer token is not accepted (unknown, revoked or expired)"


class Refused(Exception):
    """A call answered with a status other than OK; ``outcome`` is how it is audited."""

    def __init__(
        self, code: grpc.StatusCode, message: str, outcome: Outcome, *, folded: bool = False
    ) -> None:
        super().__init__(message)
        self.code = code
        self.outcome = outcome
        # Counted into its source's folded entry (controller/people/refusals.py), not audited.
        self.folded = folded


def invalid(message: str) -> Refused:
    return Refused(grpc.StatusCode.INVALID_ARGUMENT, message, Outcome.FAILED)


def not_found(message: str) -> Refused:
    return Refused(grpc.StatusCode.NOT_FOUND, message, Outcome.FAILED)


def internal_error(what: str, peer: str = "") -> Refused:
    """For an exception nobody expected, inside an ``except``: logs it with a reference
    the answer gives, so that an operator can find it."""
    return Refused(grpc.StatusCode.INTERNAL, internal_errors.logged(what, peer), Outcome.FAILED)


@dataclass
class Call:
    """One admin call: filled in by its handler with what it targets, for the audit."""

    action: str
    peer: str
    caller: Caller | None = None
    user: User | None = None
    target: str = ""
    school_id: str = ""
    # What was done, in a few words, for a change's audit entry.
    done: str = ""

    @property
    def who(self) -> Caller:
        assert self.caller is not None, "the guard sets the caller before the handler runs"
        return self.caller

    def allow(self, need: Need, school_id: str | None) -> None:
        """Raises Refused (PERMISSION_DENIED) unless the caller may act in ``school_id``."""
        if school_id is not None:
            self.school_id = school_id
        why = access.refusal(self.who, need, self.action, school_id)
        if why is not None:
            raise Refused(grpc.StatusCode.PERMISSION_DENIED, why, Outcome.DENIED)

    def allow_target(self, need: Need, schools: Iterable[str] | None, what: str) -> None:
        """For a target named by its id (``what``, e.g. "device 'panel-1'"): ``schools``
        are those it belongs to, None if there is no such target.

        A scoped caller gets one answer, NOT_FOUND "no ... in your schools", both for a
        target of another school and for none at all, so that an id tells them nothing
        of what exists elsewhere; both are audited as denied (the other school is kept
        in the entry, for central ops). Central ops get a plain NOT_FOUND."""
        scope = self.who.scope
        if schools is None:
            raise self._hidden(what)
        belongs = sorted(schools)
        outside = [s for s in belongs if scope is not None and s not in scope]
        if outside:
            self.school_id = outside[0]
            raise self._hidden(what)
        checked: list[str | None] = [*belongs] or [None]
        for school in checked:
            self.allow(need, school)

    def _hidden(self, what: str) -> Refused:
        if self.who.scope is None:
            return not_found(f"no {what}")
        return Refused(grpc.StatusCode.NOT_FOUND, f"no {what} in your schools", Outcome.DENIED)


class Guard:
    """Authentication, the audit log and store calls off the event loop, for handlers."""

    def __init__(
        self,
        store: AccessStore,
        executor: ThreadPoolExecutor,
        on_denied: Callable[[str], None] = lambda action: None,
        now: Callable[[], float] = time.time,
        refusals: Refusals | None = None,
    ) -> None:
        self._store = store
        self._off = Offload(executor)
        self._on_denied = on_denied
        self.now = now
        self._refusals = refusals

    async def off_loop(self, fn: Callable[..., T], *args: object) -> T:
        """Runs a store call on the store pool; a store failure becomes UNAVAILABLE."""
        try:
            return await self._off(fn, *args)
        except StoreError as exc:
            raise Refused(
                grpc.StatusCode.UNAVAILABLE,
                f"controller store unavailable: {exc}",
                Outcome.FAILED,
            ) from None

    async def authenticate(self, context: Context, peer: str) -> User:
        """The caller's user. A good token is served whatever its source did: many
        people share one source address (a school's NAT, the load balancer in front of
        several controllers), and one of them presenting bad tokens must not lock the
        others out. A source that keeps presenting bad tokens is answered
        RESOURCE_EXHAUSTED, folded into one audit entry."""
        token = access.bearer(context.invocation_metadata())
        user = None
        if token is not None:
            user = await self.off_loop(self._store.find_user, access.hash_token(token))
        if user is not None and user.active(self.now()):
            return user
        raise await self._unauthenticated(peer, _MISSING if token is None else _NOT_ACCEPTED)

    async def _unauthenticated(self, peer: str, message: str) -> Refused:
        if self._refusals is not None:
            busy = await self._refusals.busy(peer, SIGN_IN)
            if busy is not None:
                return Refused(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, busy, Outcome.DENIED, folded=True
                )
            self._refusals.refused(peer, SIGN_IN)
        return Refused(grpc.StatusCode.UNAUTHENTICATED, message, Outcome.DENIED)

    def folded(self, call: Call) -> None:
        """A denial counted into its source's folded entry: only the metric sees it now."""
        self._on_denied(call.action)

    async def audit(self, call: Call, outcome: Outcome, message: str) -> None:
        if outcome is Outcome.DENIED:
            self._on_denied(call.action)
        entry = AuditEntry(
            entry_id=0,
            at=self.now(),
            actor=call.caller.name if call.caller else NO_ACTOR,
            action=call.action,
            target=call.target[:200],
            school_id=call.school_id[:200],
            outcome=outcome,
            message=message[:500],
            peer=call.peer[:100],
        )
        try:
            await self.off_loop(self._store.append_audit, entry)
        except Refused:
            # The call's own answer stands; the lost entry is logged with all it held.
            log.error("audit entry not stored %s", entry)
        level = logging.INFO if outcome is Outcome.OK else logging.WARNING
        log.log(
            level,
            "admin %s action=%s actor=%s target=%s school=%s peer=%s: %s",
            outcome.value,
            call.action,
            entry.actor,
            entry.target or "-",
            entry.school_id or "-",
            entry.peer,
            message,
        )


Handler = Callable[[Any, Req, Call], Awaitable[Resp]]


def guarded(
    action: str, need: Need, *, audited: bool = False
) -> Callable[[Handler[Req, Resp]], Callable[[Any, Req, Context], Awaitable[Resp]]]:
    """Wraps an AdminService handler ``(self, request, call)`` into a gRPC method.

    ``audited``: the call changes something, so every outcome is logged; otherwise
    only denials are.
    """

    def wrap(handler: Handler[Req, Resp]) -> Callable[[Any, Req, Context], Awaitable[Resp]]:
        @functools.wraps(handler)
        async def method(self: Any, request: Req, context: Context) -> Resp:
            guard: Guard = self.guard
            call = Call(action=action, peer=peer_of(context))
            try:
                call.user = await guard.authenticate(context, call.peer)
                call.caller = Caller.of(call.user)
                # The role first; the target's school when the handler knows it.
                why = access.role_refusal(call.caller, need, action)
                if why is not None:
                    raise Refused(grpc.StatusCode.PERMISSION_DENIED, why, Outcome.DENIED)
                # After the caller is known, so that the attempt is audited.
                why = out_of_range(request)  # type: ignore[arg-type]
                if why is not None:
                    raise invalid(why)
                result = await handler(self, request, call)
            except ProtocolError as exc:
                refused = invalid(str(exc))
            except Refused as exc:
                refused = exc
            except Exception:
                # Our bug, not the caller's: logged once with its traceback, answered
                # without internals, and audited like any other outcome.
                refused = internal_error(action, call.peer)
            else:
                if audited:
                    await guard.audit(call, Outcome.OK, call.done)
                return result
            if refused.folded:
                guard.folded(call)
            elif audited or refused.outcome is Outcome.DENIED:
                await guard.audit(call, refused.outcome, str(refused))
            await context.abort(refused.code, str(refused))
            raise AssertionError("abort returns only by raising")

        return method

    return wrap
