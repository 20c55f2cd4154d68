"""What controllers sharing a store tell each other about rollouts.

One controller drives rollouts: the one holding the rollouts lease. A start, pause,
resume or abort may reach any controller; one that does not drive records the change
in the store and tells the driver through the bus (controller/relay/bus.py):

- ``look``: a rollout was started, resumed or ended elsewhere; look at the store now.
- ``wake``: something a waiting rollout waits on changed (a pause, maintenance
  windows; rollout 0: every one); look again now.
- ``abort``: stop the rollout's running wave and end it, for ``by``; answered with
  ``taken`` at once and ``ended`` once it has ended, both naming the asker's
  ``nonce``.
- ``slices``: the driver cut a wave of the rollout into slices; every controller's
  slice runner (not only the driver's) looks for one to claim now. A runner that
  stored a slice's results tells the driver with ``wake``.

The store stays the truth: the driver also reads it every few seconds, so a message
lost (a listener's reconnection) only delays what it asked for. A message comes from
the database's NOTIFY, which any session allowed to connect may send, so it is read
as data: anything not exactly as written here is ignored.
"""

from __future__ import annotations

import enum
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

# To the driver, and from it.
ASK = "schoolfleet_rollouts"
TOLD = "schoolfleet_rollouts_told"

# A user's name as the store keeps it is at most this long (stored_values.py).
_BY_MAX = 200
_NONCE = re.compile(r"[0-9a-f]{1,32}")
_ID_MAX = 2**63 - 1


class Bus(Protocol):
    """The channel between controllers (controller/relay/bus.py)."""

    def subscribe(self, topic: str, handler: Callable[[str], None]) -> None: ...

    def publish(self, topic: str, payload: str) -> None: ...


class Do(enum.StrEnum):
    """What a message asks or tells."""

    LOOK = "look"
    WAKE = "wake"
    ABORT = "abort"
    TAKEN = "taken"
    ENDED = "ended"
    SLICES = "slices"


_DOS = frozenset(d.value for d in Do)
_KEYS = frozenset({"do", "rollout", "by", "n"})


@dataclass(frozen=True, slots=True)
class Message:
    """One message about rollout ``rollout_id`` (0: every rollout, for ``wake``)."""

    do: Do
    rollout_id: int
    by: str = ""
    nonce: str = ""


def encode(message: Message) -> str:
    """The message as the bus carries it."""
    fields = {"do": message.do.value, "rollout": message.rollout_id}
    return json.dumps({**fields, "by": message.by, "n": message.nonce}, separators=(",", ":"))


def parse(payload: str) -> Message | None:
    """The message in ``payload``, or None if it is not one ``encode`` wrote."""
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict) or set(value) != _KEYS or not _well_typed(value):
        return None
    message = Message(Do(value["do"]), value["rollout"], value["by"], value["n"])
    every = message.do is Do.WAKE and message.rollout_id == 0
    answerable = message.do not in (Do.ABORT, Do.TAKEN, Do.ENDED) or message.nonce
    if (message.rollout_id == 0 and not every) or not answerable:
        return None
    return message


def _well_typed(value: dict[str, object]) -> bool:
    do, rollout_id, by, nonce = value["do"], value["rollout"], value["by"], value["n"]
    return (
        isinstance(do, str)
        and do in _DOS
        # bool is an int to Python; a rollout id is neither negative nor past BIGINT.
        and type(rollout_id) is int
        and 0 <= rollout_id <= _ID_MAX
        and isinstance(by, str)
        and len(by) <= _BY_MAX
        and "\x00" not in by
        and isinstance(nonce, str)
        and (not nonce or _NONCE.fullmatch(nonce) is not None)
    )
