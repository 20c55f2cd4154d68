"""AdminClient: one Connection to the controller and a client per feature made with it
(``c.fleet.devices()``, ``c.rollouts.get(12)``); closing it closes the channel."""

from __future__ import annotations

from types import TracebackType

from cli.client.connection import Connection
from cli.client.fleet import FleetClient
from cli.client.infra import InfraClient
from cli.client.lessons import LessonsClient
from cli.client.people import PeopleClient
from cli.client.rollouts import RolloutsClient
from cli.client.uplink import UplinkClient


class AdminClient:
    """Talks to one controller's AdminService; every failure becomes a CliError."""

    def __init__(
        self,
        address: str,
        timeout: float,
        ca_cert: bytes | None = None,
        token: str | None = None,
    ) -> None:
        self._connection = Connection(address, timeout, ca_cert, token)
        self.address = address
        self.fleet = FleetClient(self._connection)
        self.people = PeopleClient(self._connection)
        self.lessons = LessonsClient(self._connection)
        self.infra = InfraClient(self._connection)
        self.rollouts = RolloutsClient(self._connection)
        self.uplink = UplinkClient(self._connection)

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._connection.close()
