"""The one Redis client: Redis on a cache host, as its admin user, over SSH.

The admin user and the port are the redis role's (redis_admin_user, redis_port), read from the inventory
through roadie.core.contract.host_value; the password is the inventory variable PASSWORD_VAR. The password
reaches the host on stdin, one line, and redis-cli in its environment (REDISCLI_AUTH): never on a command
line, never in output.
"""

from __future__ import annotations

import io
import json
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING

from roadie import remote
from roadie.core import contract, ssh
from roadie.core.errors import RoadieError
from roadie.core.inventory import Host, Inventory

if TYPE_CHECKING:
    from roadie.core.ssh import HostConnection

PASSWORD_VAR = "vault_redis_admin_password"  # noqa: S105 - a variable name, not a value
REDIS_PROGRAM = "redis_cache.py"   # roadie/remote/: INFO, key counts and flushes on a cache host


@dataclass(frozen=True)
class Admin:
    """The ACL user and the local port a cache host's Redis takes admin commands on."""

    user: str
    port: int

    def settings(self) -> dict:
        """As the host programs take them: {"user", "port"}."""
        return {"user": self.user, "port": self.port}


def admin(inv: Inventory, host: str) -> Admin:
    """The admin user and port of `host`'s Redis, as the inventory sets them, else the role's defaults."""
    return Admin(str(contract.host_value(inv, host, "REDIS_ADMIN_USER")),
                 int(contract.host_value(inv, host, "REDIS_PORT")))


def password(inv: Inventory, host: str) -> str:
    """The admin user's password, from the inventory (the vault)."""
    return inv.host_var(host, PASSWORD_VAR)


def stdin(secret: str) -> io.StringIO:
    """The password as the one line a host program reads first on stdin."""
    return io.StringIO(secret + "\n")


@dataclass
class CacheState:
    host: str
    role: str
    used_memory: int
    maxmemory: int
    clients: int
    hits: int
    misses: int
    evicted: int
    keys: int
    matching: int | None = None
    flushed: int | None = None
    keys_after: int | None = None

    @property
    def hit_ratio(self) -> str:
        total = self.hits + self.misses
        return f"{100 * self.hits / total:.1f}%" if total else "-"


def cache(inv: Inventory, host: Host, pattern: str | None = None, flush: bool = False) -> CacheState:
    """INFO, key counts and (with flush) the flush itself on one cache host."""
    secret = password(inv, host.name)
    args = {**admin(inv, host.name).settings(), "pattern": pattern, "flush": flush}
    with ssh.connect(host) as conn:
        result = conn.run(remote.command(REDIS_PROGRAM, json.dumps(args)), hide=True, warn=True,
                          in_stream=stdin(secret), timeout=300)
    if result.exited != 0:
        raise RoadieError(f"{host.name}: {(result.stderr.strip().splitlines() or ['redis probe failed'])[-1]}")
    return CacheState(host=host.name, **json.loads(result.stdout.strip().splitlines()[-1]))


def ping(conn: HostConnection, inv: Inventory) -> tuple[bool, str]:
    """Whether the host's Redis answers PONG (the restart health check), and what it said."""
    host = conn.inventory_host.name
    secret = password(inv, host)
    settings = admin(inv, host)
    script = ('IFS= read -r REDISCLI_AUTH; export REDISCLI_AUTH; '
              f'redis-cli --no-auth-warning --user {shlex.quote(settings.user)} -h 127.0.0.1 -p {settings.port} PING')
    result = conn.run(f"sh -c {shlex.quote(script)}", hide=True, warn=True, in_stream=stdin(secret), timeout=30)
    answer = result.stdout.strip()
    return answer == "PONG", answer or result.stderr.strip()[-160:]
