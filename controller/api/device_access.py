"""Whether an admin call may reach one device: the device's school is the enrollment's
(or, for a device seen but not enrolled, the registry's), and a scoped caller cannot
tell another school's device from none at all."""

from __future__ import annotations

from controller.api.guard import Call, Guard, invalid
from controller.enroll.store import EnrollTokenStore
from controller.fleet.store import DeviceStore
from controller.people.access import Need
from inventory.model import valid_id


def check_id(value: str, what: str) -> None:
    if not valid_id(value):
        raise invalid(f"{what} {value[:80]!r} is not valid")


def check_school_filter(school_id: str) -> None:
    """A list's school filter: "" (every school the caller may see) or an id."""
    if school_id:
        check_id(school_id, "school id")


class DeviceAccess:
    """Finds a device's school and asks the call whether the caller may act on it."""

    def __init__(self, guard: Guard, enrollments: EnrollTokenStore, devices: DeviceStore) -> None:
        self._guard = guard
        self._enrollments = enrollments
        self._devices = devices

    async def school(self, device_id: str) -> str | None:
        """The school of a device the store knows (enrolled or seen), or None."""
        check_id(device_id, "device id")
        enrolled = await self._guard.off_loop(self._enrollments.get_enrollment, device_id)
        if enrolled is not None:
            return enrolled.school_id
        device = await self._guard.off_loop(self._devices.get_device, device_id, self._guard.now())
        return device.identity.school_id if device is not None else None

    async def allow(self, call: Call, need: Need, device_id: str) -> None:
        """Refuses unless the caller may ``need`` the device."""
        call.target = device_id
        school = await self.school(device_id)
        call.allow_target(need, None if school is None else [school], f"device {device_id!r}")
