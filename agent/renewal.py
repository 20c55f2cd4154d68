"""The device's certificate, renewed over its own stream before it expires.

After Welcome the controller says whom to trust (its CA bundle, written to ca.crt
at once, so a new CA is trusted before the controller uses it) and in how many
seconds to renew. Then a new key is made on the device (agent/cert_tool.py, in a
process of its own) and its certificate request goes up the stream; the answer is
checked against the key and put in place, and the link opens a new stream with it
at once, without a backoff. The controller accepts the old certificate until that
stream, and refuses it from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from agent.cert_tool import NEXT_CERT
from agent.enroll import Credentials, write_file
from protos.schoolfleet.v1 import agent_pb2

log = logging.getLogger(__name__)

CAPABILITY = "renew"
# Seconds the key and CSR, or the install, may take (a slow panel's CPU).
_TOOL_TIMEOUT = 60.0


class Renewal:
    """One device's renewals: the timer, the request to send, the answer to install."""

    def __init__(
        self,
        credentials: Credentials,
        device_id: str,
        wake: Callable[[], None],
        python: str = sys.executable,
    ) -> None:
        self._credentials = credentials
        self._device_id = device_id
        # Tells the link's sender there is a request to write.
        self._wake = wake
        self._python = python
        self._timer: asyncio.Task[None] | None = None
        self._request: agent_pb2.AgentMessage | None = None
        self._switched = False

    @property
    def cert_dir(self) -> Path:
        return self._credentials.cert.parent

    def status(self, status: agent_pb2.CertificateStatus) -> None:
        """Trusts the controller's CAs and (re)sets the moment to renew."""
        self._trust(status.ca_bundle_pem)
        delay = max(0.0, status.renew_in_seconds)
        self.cancel()
        self._timer = asyncio.create_task(self._renew_after(delay), name="certificate renewal")
        log.info("certificate renewal due device=%s in=%.1fs", self._device_id, delay)

    def take_request(self) -> agent_pb2.AgentMessage | None:
        """The request to write on the stream now, once."""
        request, self._request = self._request, None
        return request

    async def answer(self, response: agent_pb2.RenewResponse) -> bool:
        """Puts the renewed certificate in place; True when the link should reconnect."""
        if response.refused or not response.certificate_pem:
            log.error(
                "certificate renewal refused device=%s reason=%s",
                self._device_id,
                response.refused or "no certificate in the answer",
            )
            return False
        try:
            write_file(self.cert_dir / NEXT_CERT, response.certificate_pem, 0o644)
            await self._tool("install", str(self.cert_dir))
        except (OSError, RenewalFailed) as exc:
            log.error("renewed certificate not installed device=%s reason=%s", self._device_id, exc)
            return False
        self._trust(response.ca_bundle_pem)
        self._switched = True
        log.info("certificate renewed device=%s; reconnecting with it", self._device_id)
        return True

    def take_switch(self) -> bool:
        """Whether a renewed certificate awaits its first stream (asked once)."""
        switched, self._switched = self._switched, False
        return switched

    def cancel(self) -> None:
        """Stops a pending renewal (a new status, or the link stopping)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._request = None

    def _trust(self, bundle: bytes) -> None:
        if not bundle:
            return
        path = self._credentials.ca
        with contextlib.suppress(OSError):
            if path.read_bytes() == bundle:
                return
        try:
            write_file(path, bundle, 0o644)
        except OSError as exc:
            log.error("CA bundle not saved path=%s reason=%s", path, exc)
            return
        log.info("trusted CAs updated path=%s count=%d", path, bundle.count(b"BEGIN CERTIFICATE"))

    async def _renew_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            csr = await self._tool("csr", str(self.cert_dir), self._device_id)
        except (OSError, RenewalFailed) as exc:
            log.error("certificate request not made device=%s reason=%s", self._device_id, exc)
            return
        self._request = agent_pb2.AgentMessage(renew_request=agent_pb2.RenewRequest(csr_pem=csr))
        log.info("certificate renewal asked device=%s", self._device_id)
        self._wake()

    async def _tool(self, *args: str) -> bytes:
        process = await asyncio.create_subprocess_exec(
            self._python,
            "-m",
            "agent.cert_tool",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(), _TOOL_TIMEOUT)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise RenewalFailed(f"cert_tool {args[0]} took over {_TOOL_TIMEOUT:g}s") from None
        if process.returncode != 0:
            raise RenewalFailed(err.decode(errors="replace").strip()[:300] or "cert_tool failed")
        return out


class RenewalFailed(Exception):
    """A step of the renewal on the device failed; the message is one line."""
