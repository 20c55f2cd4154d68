"""What both demos do with their controllers, whichever they are: schoolctl logged in
as central ops, an enrollment token per school, simulated devices' agent configs, and
waiting for the devices to come online. A Site says where the controllers answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from demo.errors import DemoError
from demo.layout import BIN, ROOT


class Device(NamedTuple):
    """A simulated device: a real agent process with its own identity."""

    device_id: str
    kind: str
    school: str
    room: str


@dataclass(frozen=True, slots=True)
class Site:
    """Where a demo's controllers answer, and the folder the demo keeps its files in."""

    folder: Path
    # The agents' stream (mutual TLS).
    agents: str
    # Enrollment and schoolctl (TLS without client certificates).
    public: str
    ca_cert: Path
    # The store's URL, for `schoolfleet-controller users create`.
    database: str

    @property
    def schoolctl_config(self) -> Path:
        return self.folder / "schoolctl.toml"

    def run(self, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """One of the virtual environment's programs, schoolctl with this site's login."""
        env = {**os.environ, "SCHOOLCTL_CONFIG": str(self.schoolctl_config)}
        env.pop("SCHOOLCTL_TOKEN", None)
        return subprocess.run(
            [str(BIN / argv[0]), *argv[1:]],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            input=stdin,
            env=env,
        )

    def must(self, *argv: str, stdin: str | None = None) -> str:
        done = self.run(*argv, stdin=stdin)
        if done.returncode != 0:
            raise DemoError(f"{' '.join(argv[:3])} failed: {done.stderr.strip()}")
        return done.stdout

    def login(self) -> None:
        """A central-ops user for schoolctl, whenever its config has none; the store
        must be reachable and a controller serving on ``public``."""
        config = self.schoolctl_config
        if config.exists() and "token" in config.read_text():
            return
        name = f"demo-ops-{int(time.time())}"
        token = self.must(
            "schoolfleet-controller", "users", "create", name, "--database", self.database
        ).strip()
        self.must(
            "schoolctl",
            *("--controller", self.public, "--ca-cert", str(self.ca_cert)),
            "login",
            stdin=token + "\n",
        )

    def enroll_tokens(self, devices: list[Device]) -> dict[str, str]:
        """One token per school, for the devices that have no certificate yet."""
        schools = sorted({device.school for device in devices})
        return {
            school: self.must(
                "schoolctl", "enroll", "token", "create", "--school", school, "--uses", "10"
            ).strip()
            for school in schools
        }

    def agent_argv(self, device: Device, token: str) -> list[str]:
        """Writes the device's agent config in the folder; the command that runs it."""
        name = device.device_id
        config = self.folder / f"{name}.toml"
        kiosk = ROOT / "demo" / "kiosk.py"
        config.write_text(
            f'device_id = "{name}"\nkind = "{device.kind}"\nschool_id = "{device.school}"\n'
            f'room_id = "{device.room}"\ncontroller = "{self.agents}"\n'
            f'spool_path = "{self.folder / (name + "-spool.db")}"\n'
            f'cert_dir = "{self.folder / ("tls-" + name)}"\nca_cert = "{self.ca_cert}"\n'
            f'enroll_controller = "{self.public}"\nenroll_token = "{token}"\n'
            f'kiosk_argv = ["{sys.executable}", "{kiosk}", "{{url}}"]\n'
        )
        return [str(BIN / "schoolfleet-agent"), "--config", str(config)]

    def online(self) -> int | None:
        """How many devices the controllers count online; None if none answers."""
        done = self.run("schoolctl", "status", "--json")
        if done.returncode != 0:
            return None
        totals = json.loads(done.stdout).get("totals")
        return int(totals.get("online", 0)) if isinstance(totals, dict) else None

    def wait_online(self, count: int, seconds: float) -> bool:
        """Whether ``count`` devices came online within ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.online() == count:
                return True
            time.sleep(0.5)
        return False
