"""The audit log's way in for what the admin guard does not see: enrollments.

``appender`` makes the one callable that AgentService records every enrollment
through, granted or refused; whatever folds or limits entries (per source, say)
wraps this callable, and the service does not change.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from controller.errors import StoreError
from controller.offload import Offload
from controller.people.store import AccessStore
from inventory.people import AuditEntry

log = logging.getLogger(__name__)

AuditSink = Callable[[AuditEntry], Awaitable[None]]


def appender(store: AccessStore, executor: ThreadPoolExecutor) -> AuditSink:
    """Appends an entry to the store's audit log off the event loop; a store failure
    is logged with what the entry held and does not change the call's answer."""

    off = Offload(executor)

    async def append(entry: AuditEntry) -> None:
        try:
            await off(store.append_audit, entry)
        except StoreError as exc:
            log.error("audit entry not stored %s error=%s", entry, exc)

    return append
