"""HAProxy's runtime API on the balancer host, over SSH: drain, wait for sessions, enable, read state.

Commands go to the admin socket through a few lines of Python run on the balancer (every managed
host has python3), so no extra package is needed there and nothing is parsed from free text.
"""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from roadie.errors import RoadieError
from roadie.ssh import python_command

ADMIN_SOCKET = "/run/haproxy/admin.sock"
_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")

_REMOTE = r'''
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
chunks = []
while True:
    data = s.recv(65536)
    if not data:
        break
    chunks.append(data)
sys.stdout.write(b"".join(chunks).decode())
'''


@dataclass(frozen=True)
class ServerState:
    """One backend server as HAProxy sees it."""

    backend: str
    server: str
    status: str        # UP, DOWN, DRAIN, MAINT, "UP 1/2", "no check" ...
    sessions: int      # current sessions (scur)
    weight: int
    check_status: str

    @property
    def in_rotation(self) -> bool:
        """Takes new requests: up by health check and neither drained nor in maintenance."""
        return self.status.startswith("UP") and self.weight > 0

    def as_dict(self) -> dict:
        return {"backend": self.backend, "server": self.server, "status": self.status,
                "sessions": self.sessions, "weight": self.weight, "check_status": self.check_status}


def parse_stat(csv_text: str) -> list[ServerState]:
    """Servers (not FRONTEND/BACKEND rows) from `show stat` CSV output."""
    text = csv_text.lstrip()
    if not text.startswith("# "):
        raise RoadieError(f"unexpected answer from the HAProxy runtime API: {text[:80]!r}")
    reader = csv.DictReader(io.StringIO(text[2:]))
    servers = []
    for row in reader:
        if row.get("svname") in ("FRONTEND", "BACKEND", None) or not row.get("pxname"):
            continue
        servers.append(ServerState(
            backend=row["pxname"], server=row["svname"], status=row.get("status", ""),
            sessions=int(row.get("scur") or 0), weight=int(row.get("weight") or 0),
            check_status=row.get("check_status", ""),
        ))
    return servers


def _check_name(kind: str, value: str) -> str:
    if not _NAME.match(value):
        raise RoadieError(f"bad {kind} name {value!r}")
    return value


class Balancer:
    """The runtime API of one HAProxy host, reached through a verified SSH connection."""

    def __init__(self, conn, backend: str = "stream", socket_path: str = ADMIN_SOCKET) -> None:  # noqa: ANN001
        self.conn = conn
        self.backend = _check_name("backend", backend)
        self.socket_path = socket_path

    def command(self, line: str) -> str:
        """Send one runtime API command; an error answer becomes a RoadieError."""
        result = self.conn.run(python_command(_REMOTE, self.socket_path, line), hide=True, warn=True, in_stream=False)
        if result.exited != 0:
            detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise RoadieError(f"HAProxy runtime API on {self._host()}: {detail}")
        answer = result.stdout
        lowered = answer.strip().lower()
        if lowered.startswith(("no such", "unknown command", "permission denied", "require")) \
                or "no such server" in lowered or "no such backend" in lowered:
            raise RoadieError(f"HAProxy runtime API on {self._host()}: {answer.strip().splitlines()[0]}")
        return answer

    def _host(self) -> str:
        host = getattr(self.conn, "inventory_host", None)
        return host.name if host else str(getattr(self.conn, "host", "balancer"))

    def servers(self) -> dict[str, ServerState]:
        """This backend's servers by name."""
        return {s.server: s for s in parse_stat(self.command("show stat")) if s.backend == self.backend}

    def server(self, name: str) -> ServerState:
        servers = self.servers()
        if name not in servers:
            raise RoadieError(f"backend {self.backend} on {self._host()} has no server {name!r} "
                              f"(has: {', '.join(sorted(servers)) or 'none'})")
        return servers[name]

    def set_state(self, name: str, state: str) -> None:
        if state not in ("ready", "drain", "maint"):
            raise RoadieError(f"bad server state {state!r}")
        self.server(name)  # unknown server: one clear line
        self.command(f"set server {self.backend}/{_check_name('server', name)} state {state}")

    def drain(self, name: str) -> None:
        """Stop sending new requests to a server; requests in flight go on."""
        self.set_state(name, "drain")

    def enable(self, name: str) -> None:
        """Put a drained or maintenance server back in rotation (health checks decide UP)."""
        self.set_state(name, "ready")

    def wait_drained(self, name: str, timeout: float, poll: float = 0.5,
                     progress: Callable[[ServerState], None] | None = None) -> tuple[bool, ServerState]:
        """Wait until the server has no sessions; returns (drained, last state) at the timeout."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.server(name)
            if state.sessions == 0:
                return True, state
            if progress:
                progress(state)
            if time.monotonic() >= deadline:
                return False, state
            time.sleep(poll)

    def wait_up(self, name: str, timeout: float, poll: float = 0.5) -> ServerState:
        """Wait until health checks report the server UP and it takes traffic."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.server(name)
            if state.in_rotation:
                return state
            if time.monotonic() >= deadline:
                raise RoadieError(f"{name} is not back in rotation on {self._host()} after {timeout:.0f} s "
                                  f"(status {state.status}, check {state.check_status})")
            time.sleep(poll)
