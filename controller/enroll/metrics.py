"""Prometheus figures of the certificates, computed at scrape: when the CAs and the
server certificate end, and where the devices' certificates are.

An operator who must keep a fleet running for years needs to hear of an ending CA or
server certificate, and of devices that stopped renewing, months ahead, not on the day
the streams fail (deploy/prometheus/rules.yml alerts on both).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from cryptography import x509
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.enroll.ca_keeper import CaKeeper
from controller.enroll.cert_store import CertCounts
from controller.errors import PkiError, StoreError

log = logging.getLogger(__name__)

# A device certificate with less than this share of its lifetime left counts as
# expiring: past the two-thirds renewal point by half of what remained, renewal is
# not happening for it.
EXPIRING_SHARE = 1 / 6


class CertFigures(Protocol):
    """The store's query the collector reads."""

    def cert_counts(self, issuing_ca_id: str, expiring_before: float) -> CertCounts: ...


class CertCollector(Collector):
    """``schoolfleet_certificate_expiry_timestamp_seconds`` by certificate and
    ``schoolfleet_device_certificates`` by state."""

    def __init__(
        self,
        keeper: CaKeeper,
        store: CertFigures,
        lifetime: float,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._keeper = keeper
        self._store = store
        self._lifetime = lifetime
        self._now = now

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "schoolfleet_certificate_expiry_timestamp_seconds",
                "When the controller's certificates end (Unix time): the current CA, the "
                "next CA during a rotation, and the server certificate.",
                labels=["certificate"],
            ),
            GaugeMetricFamily(
                "schoolfleet_device_certificates",
                "Enrolled devices by their certificate in use: all, on another CA than "
                "the signing one, with a renewal not yet used, and expiring (less than "
                "a sixth of its lifetime left: not renewing).",
                labels=["state"],
            ),
        )

    def collect(self) -> Iterator[Metric]:
        ends, devices = self._families()
        try:
            cas = self._keeper.cas()
            server = x509.load_pem_x509_certificate(self._keeper.server_pem())
        except (PkiError, ValueError):
            # A lab without TLS has no CA: no series, the families still exist.
            yield from (ends, devices)
            return
        ends.add_metric(["ca"], cas.current.certificate.not_valid_after_utc.timestamp())
        if cas.next is not None:
            ends.add_metric(["ca_next"], cas.next.certificate.not_valid_after_utc.timestamp())
        ends.add_metric(["server"], server.not_valid_after_utc.timestamp())
        try:
            counts = self._store.cert_counts(
                cas.issuing_id, self._now() + self._lifetime * EXPIRING_SHARE
            )
        except StoreError as exc:
            log.error("device certificates not counted for /metrics: %s", exc)
            yield ends
            return
        for state, value in (
            ("all", counts.devices),
            ("on_other_ca", counts.on_other_ca),
            ("renewal_pending", counts.renewal_pending),
            ("expiring", counts.expiring),
        ):
            devices.add_metric([state], value)
        yield from (ends, devices)
