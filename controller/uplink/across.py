"""A check by hand of a school whose able devices are connected to another
controller sharing the store: asked of the others (controller/relay/asking.py), done
by the one holding such a device, its result sent back as JSON."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable

from controller.errors import StoreError, UplinkElsewhere, UplinkUnavailable
from controller.uplink.checks import UplinkChecks
from inventory.uplink import UplinkCheck

KIND = "uplink-check"

Taken = Callable[[], Awaitable[None]]


def answering(checks: UplinkChecks) -> Callable[[str, Taken], Awaitable[str | None]]:
    """This controller's answer to another's question about a school: the check, if one
    of the school's able devices is connected here."""

    async def answer(school_id: str, taken: Taken) -> str | None:
        if not await checks.able_here(school_id):
            return None
        await taken()
        try:
            check = await checks.check(school_id)
        except UplinkElsewhere:
            return None
        except (UplinkUnavailable, StoreError) as exc:
            return json.dumps({"error": str(exc)})
        return json.dumps({"check": dataclasses.asdict(check)})

    return answer


def read_answer(text: str) -> UplinkCheck:
    """The check another controller made; UplinkUnavailable with its reason if it could
    not, or if the answer is not one ``answering`` gives."""
    try:
        answer = json.loads(text)
        if "error" in answer:
            raise UplinkUnavailable(str(answer["error"]))
        fields = answer["check"]
        return UplinkCheck(
            school_id=str(fields["school_id"]),
            started_at=float(fields["started_at"]),
            device_id=str(fields["device_id"]),
            bytes=int(fields["bytes"]),
            seconds=None if fields["seconds"] is None else float(fields["seconds"]),
            mbps=None if fields["mbps"] is None else float(fields["mbps"]),
            error=str(fields["error"]),
        )
    except (TypeError, KeyError, ValueError, json.JSONDecodeError) as exc:
        raise UplinkUnavailable(f"another controller's answer was not understood: {exc}") from None
