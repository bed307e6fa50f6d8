"""HAProxy's runtime API on the balancer host, over SSH: drain, wait for sessions, enable, read state.

The admin socket is root's alone. The deploy user reaches it only through the role's helper
(`sudo roadie-haproxy`, roles/haproxy/files/roadie_haproxy.py), which allows reading the servers'
state, drain / ready / maint, weights and the maintenance switch, and checks every name first.
"""

from __future__ import annotations

import csv
import io
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from roadie.core import contract
from roadie.core.errors import RoadieError

if TYPE_CHECKING:
    from roadie.core.ssh import HostConnection

HELPER = "/usr/local/sbin/roadie-haproxy"     # roles/haproxy: the deploy user's checked path to the API
_NAME = re.compile(r"[A-Za-z0-9_.:-]+")


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
    if not _NAME.fullmatch(value):
        raise RoadieError(f"bad {kind} name {value!r}")
    return value


class Balancer:
    """The runtime API of one HAProxy host, reached through a verified SSH connection."""

    def __init__(self, conn: HostConnection, backend: str = contract.STREAM_BACKEND) -> None:
        self.conn = conn
        self.backend = _check_name("backend", backend)

    def command(self, *args: str, stdin: str | None = None) -> str:
        """One request to the balancer's helper (`roadie-haproxy ARGS`); an error answer is a RoadieError."""
        line = " ".join(shlex.quote(str(a)) for a in args)
        result = self.conn.run(f"sudo -n {HELPER} {line}", hide=True, warn=True, timeout=120,
                               in_stream=io.StringIO(stdin) if stdin is not None else False)
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
        return self._backend_of(self.command("stat"))

    def _backend_of(self, stat_csv: str) -> dict[str, ServerState]:
        """This backend's servers by name, from a `show stat` answer."""
        return {s.server: s for s in parse_stat(stat_csv) if s.backend == self.backend}

    def server(self, name: str) -> ServerState:
        servers = self.servers()
        if name not in servers:
            raise RoadieError(f"backend {self.backend} on {self._host()} has no server {name!r} "
                              f"(has: {', '.join(sorted(servers)) or 'none'})")
        return servers[name]

    def set_state(self, name: str, state: str) -> dict[str, ServerState] | None:
        """Change a server's state; the backend's servers as the helper read them just after (None from a
        helper that answers nothing, before roles/haproxy answered with them)."""
        if state not in ("ready", "drain", "maint"):
            raise RoadieError(f"bad server state {state!r}")
        try:
            answer = self.command("state", self.backend, _check_name("server", name), state)
        except RoadieError:
            self.server(name)  # an unknown server gets its one clear line; asked only then (a round trip)
            raise
        if not answer.lstrip().startswith("# "):
            return None
        return self._backend_of(answer)

    def drain(self, name: str) -> dict[str, ServerState] | None:
        """Stop sending new requests to a server; requests in flight go on. The servers just after."""
        return self.set_state(name, "drain")

    def enable(self, name: str) -> dict[str, ServerState] | None:
        """Put a drained or maintenance server back in rotation (health checks decide UP). The servers just
        after."""
        return self.set_state(name, "ready")

    def _first(self, name: str, seen: dict[str, ServerState] | None) -> ServerState:
        """The server from `seen` (what a state change answered) when it is there; else read now."""
        return seen[name] if seen and name in seen else self.server(name)

    def wait_drained(self, name: str, timeout: float, poll: float = 0.5,
                     progress: Callable[[ServerState], None] | None = None,
                     stop: Callable[[], bool] | None = None,
                     seen: dict[str, ServerState] | None = None) -> tuple[bool, ServerState]:
        """Wait until the server has no sessions; returns (drained, last state) at the timeout, or as
        soon as `stop()` says so. `seen`: the drain's own answer, the first look."""
        deadline = time.monotonic() + timeout
        state = self._first(name, seen)
        while True:
            if state.sessions == 0:
                return True, state
            if progress:
                progress(state)
            if time.monotonic() >= deadline or (stop is not None and stop()):
                return False, state
            time.sleep(poll)
            state = self.server(name)

    def wait_up(self, name: str, timeout: float, poll: float = 0.5,
                seen: dict[str, ServerState] | None = None) -> ServerState:
        """Wait until health checks report the server UP and it takes traffic. `seen`: the enable's own
        answer, the first look."""
        deadline = time.monotonic() + timeout
        state = self._first(name, seen)
        while True:
            if state.in_rotation:
                return state
            if time.monotonic() >= deadline:
                raise RoadieError(f"{name} is not back in rotation on {self._host()} after {timeout:.0f} s "
                                  f"(status {state.status}, check {state.check_status})")
            time.sleep(poll)
            state = self.server(name)
