"""The launcher's own API keys, made when a deployment has keys (``api_keys``).

The scheduler loads the user's key file and ``scheduler.keys``, which holds two random keys the
launcher makes for this deployment: a ``service`` key for the HTTP door (``door.key``: the door
sends it to the scheduler and acts for the tenants it authenticated itself) and an ``admin`` key
(``admin.key``: the launcher's readiness checks; the operator's all-tenants statistics). All
three files are written 0600 into the runtime dir, which is removed on stop.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

SCHEDULER_KEYS = "scheduler.keys"
DOOR_KEY = "door.key"
ADMIN_KEY = "admin.key"
DOOR_TENANT = "fastswitch-door"
ADMIN_TENANT = "fastswitch-admin"


@dataclass(frozen=True, slots=True)
class LauncherKeys:
    admin_key: str = ""
    service_key: str = ""

    @classmethod
    def make(cls) -> LauncherKeys:
        return cls(
            admin_key="fsa-" + secrets.token_urlsafe(32),
            service_key="fss-" + secrets.token_urlsafe(32),
        )

    def write(self, run_dir: Path) -> None:
        """Writes the three files into `run_dir`, readable by this user only."""
        lines = (
            f"{self.service_key} {DOOR_TENANT} role=service\n"
            f"{self.admin_key} {ADMIN_TENANT} role=admin\n"
        )
        _write_private(run_dir / SCHEDULER_KEYS, "# made by the launcher\n" + lines)
        _write_private(run_dir / DOOR_KEY, self.service_key + "\n")
        _write_private(run_dir / ADMIN_KEY, self.admin_key + "\n")


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
