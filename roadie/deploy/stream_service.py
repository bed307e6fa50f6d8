"""The stream service on one host: restart it, read its /healthz, and the health gate a deploy waits on.

/healthz is read on the host through nginx (roadie/remote/healthz.py), as the balancer sees the host.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from roadie import remote
from roadie.core import contract
from roadie.core.errors import RoadieError
from roadie.deploy.stream_host import host_name, run

if TYPE_CHECKING:
    from roadie.core.ssh import HostConnection

SERVICE = "stream.service"
HEALTH_URL = contract.HEALTH_URL   # through nginx, as the balancer sees the host
HEALTH_PROGRAM = "healthz.py"        # roadie/remote/: one /healthz answer, read on the host


def restart(conn: HostConnection) -> None:
    """Restart the stream service (graceful stop, then start)."""
    run(conn, f"sudo -n systemctl restart {SERVICE}", what="restarting the stream service", timeout=120)


@dataclass
class Health:
    """One /healthz answer."""

    status: int
    release: str | None
    database: str | None
    cache: str | None
    error: str = ""

    def ok_for(self, release_id: str) -> bool:
        return (self.status == 200 and self.release == release_id and self.database == "ok"
                and self.cache == "ok")

    def describe(self) -> str:
        if self.error:
            return self.error
        return f"HTTP {self.status}, release {self.release}, database {self.database}, cache {self.cache}"


def health(conn: HostConnection, url: str = HEALTH_URL) -> Health:
    out = run(conn, remote.command(HEALTH_PROGRAM, url), what="health check", timeout=30)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    body = data.get("body") or {}
    return Health(data.get("status", 0), body.get("release"), body.get("database"), body.get("cache"),
                  data.get("error", ""))


def health_gate(conn: HostConnection, release_id: str, *, passes: int = 3, interval: float = 0.5,
                timeout: float = 60) -> Health:
    """`passes` healthy answers in a row reporting `release_id`, within `timeout`; else RoadieError."""
    deadline = time.monotonic() + timeout
    streak = 0
    last = None
    while time.monotonic() < deadline:
        last = health(conn)
        streak = streak + 1 if last.ok_for(release_id) else 0
        if streak >= passes:
            return last
        time.sleep(interval)
    raise RoadieError(f"{host_name(conn)}: health gate failed after {timeout:.0f} s: "
                      f"{last.describe() if last else 'no answer'} (want release {release_id}, db and cache ok)")
