"""A command for a device, sent on its stream by whichever controller holds it.

The controller that decided the command tries its own streams first; a device whose
stream is elsewhere gets it through the bus, every controller trying it on its own
streams. Commands are packed together, as many as fit in one message. The bus may
lose a message with a connection (its ``on_gap``): commands that must arrive live in
the store's outbox too, and are sent from it again then and on the device's next
stream.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import Executor

from controller.errors import StoreError
from controller.offload import Offload
from controller.relay.bus import MAX_PAYLOAD, Bus

log = logging.getLogger(__name__)

TOPIC = "schoolfleet_device_commands"

# Sends ``data`` (a serialized command) on the device's stream if this controller
# holds it; says whether it did.
Here = Callable[[str, bytes], bool]


def pack(commands: list[tuple[str, bytes]]) -> Iterator[str]:
    """``commands`` as messages of at most MAX_PAYLOAD bytes each; one too large to
    send alone is left out (the outbox still has it) and logged."""
    batch: list[str] = []
    size = 2
    for device_id, data in commands:
        entry = json.dumps([device_id, base64.b64encode(data).decode()])
        grown = len(entry.encode()) + 1
        if grown + 2 > MAX_PAYLOAD:
            log.warning("command for device %r too large to relay (%d bytes)", device_id, len(data))
            continue
        if size + grown > MAX_PAYLOAD:
            yield "[" + ",".join(batch) + "]"
            batch, size = [], 2
        batch.append(entry)
        size += grown
    if batch:
        yield "[" + ",".join(batch) + "]"


def unpack(payload: str) -> list[tuple[str, bytes]]:
    """A message's commands; ValueError if it is not one ``pack`` made."""
    try:
        entries = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    shaped = isinstance(entries, list) and all(map(_is_entry, entries))
    if not shaped:
        raise ValueError("not a list of [device, command]")
    try:
        return [(device_id, base64.b64decode(data, validate=True)) for device_id, data in entries]
    except binascii.Error as exc:
        raise ValueError(f"not base64: {exc}") from None


def _is_entry(entry: object) -> bool:
    return isinstance(entry, list) and len(entry) == 2 and all(isinstance(v, str) for v in entry)


class DeviceCommands:
    """Sends commands to devices on any controller; ``run()`` publishes until cancelled."""

    def __init__(self, bus: Bus, here: Here, executor: Executor | None) -> None:
        self._bus = bus
        self._here = here
        self._off = Offload(executor)
        self._waiting: list[tuple[str, bytes]] = []
        self._wake = asyncio.Event()
        bus.subscribe(TOPIC, self._received)

    def send(self, device_id: str, data: bytes) -> None:
        """Sends the command now if the device's stream is here, else relays it (on
        the event loop)."""
        if not self._here(device_id, data):
            self._waiting.append((device_id, data))
            self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            waiting, self._waiting = self._waiting, []
            for payload in pack(waiting):
                try:
                    await self._off(self._bus.publish, TOPIC, payload)
                except StoreError as exc:
                    # The outbox keeps what must arrive; the device gets it on its
                    # next stream.
                    log.error("commands not relayed: %s", exc)

    def _received(self, payload: str) -> None:
        try:
            commands = unpack(payload)
        except ValueError as exc:
            log.warning("relayed commands not understood: %s", exc)
            return
        for device_id, data in commands:
            self._here(device_id, data)
