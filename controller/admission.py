"""Which device streams the controller takes: the enrollment vouches, not the CA alone.

A certificate signed by the controller's CA proves only that the CA signed it once.
A stream is taken when the device's enrollment still stands behind it: the device is
enrolled, not decommissioned, in the school the certificate names, and the
certificate is the one its latest enrollment issued. Plain logic of values; the
stream handler reads the enrollment and acts on the answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from inventory.model import Enrollment


@dataclass(frozen=True, slots=True)
class StreamRefusal:
    """Why a stream is refused: ``reason`` for logs and metrics, ``message`` for the device."""

    reason: str
    message: str


def stream_refusal(
    device_id: str,
    cert_school: str | None,
    serial: str | None,
    enrolled: Enrollment | None,
) -> StreamRefusal | None:
    """None if the stream may open; otherwise why not.

    ``cert_school`` and ``serial`` (hex) are the verified client certificate's, None on
    a controller without agent TLS (a lab: a device known only from its plaintext
    streams may connect, unless it was decommissioned).
    """
    if enrolled is None:
        return (
            None
            if serial is None
            else StreamRefusal(
                "not_enrolled",
                f"device {device_id} is not enrolled; it must enroll with a token of its school",
            )
        )
    if enrolled.revoked_at is not None:
        return StreamRefusal(
            "decommissioned",
            f"device {device_id} is decommissioned; it must be allowed to re-enroll and enroll",
        )
    if serial is None:
        return None
    if cert_school != enrolled.school_id:
        # The enrolled school is not named: the certificate's holder may be anyone.
        return StreamRefusal(
            "wrong_school",
            f"the certificate names school {cert_school}, not device {device_id}'s school; "
            "it must enroll with a token of its school",
        )
    if serial == enrolled.serial:
        return None
    return StreamRefusal(
        "replaced_certificate",
        f"certificate {serial} is not device {device_id}'s current one "
        "(it was renewed or enrolled again since)",
    )
