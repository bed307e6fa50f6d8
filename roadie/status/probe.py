"""The whole fleet at a glance (`fab status`): one SSH round trip per host, all hosts at once.

Each host runs one small Python probe (roadie/remote/status_probe.py; every managed host has python3)
that reports what its groups make relevant: load, memory, disk, its services, the stream release,
PostgreSQL's role and lag, Redis's role, memory and clients, and on database and cache hosts how many
clients come from the stream hosts. HAProxy's view of the stream hosts comes from the runtime API; the
deploy lease and the hosts drained on purpose from the lock host. An unreachable host is a row that
says so; the others still answer. What needs attention in all that: report.py.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict, dataclass, field

from roadie import remote
from roadie.cache import client as redis_client
from roadie.change import lock, rotation
from roadie.core import contract, ssh
from roadie.core.errors import RoadieError
from roadie.core.fleet import Fleet
from roadie.core.inventory import Host, Inventory
from roadie.deploy import stream_host
from roadie.deploy.balancer import Balancer, ServerState

# The units that matter on a host, by inventory group.
UNITS = {
    "balancer": ("haproxy.service",),
    "stream": ("stream.service", "nginx.service"),
    "database": (contract.PG_UNIT,),
    "cache": (contract.REDIS_UNIT,),
}
PROBE = "status_probe.py"      # roadie/remote/


@dataclass
class HostStatus:
    """One row of `fab status`."""

    host: str
    groups: list[str]
    reachable: bool
    error: str = ""
    release: str | None = None
    services: dict[str, str] = field(default_factory=dict)
    haproxy: str | None = None          # UP / DRAIN / MAINT / DOWN ... for stream hosts
    haproxy_weight: int | None = None   # 0 when drained
    haproxy_check: str | None = None    # the last health check (L7OK, L4CON ...)
    sessions: int | None = None
    drained_on_purpose: str | None = None   # "drained by X: why", from `fab drain`
    load1: float | None = None
    mem_used_pct: float | None = None
    disk_used_pct: float | None = None
    pg_role: str | None = None
    pg_lag_bytes: int | None = None
    pg_stream_clients: int | None = None     # connections from the stream hosts' addresses
    redis_role: str | None = None
    redis_memory: int | None = None
    redis_clients: int | None = None
    redis_stream_clients: int | None = None  # clients from the stream hosts' addresses

    @property
    def out_of_rotation(self) -> bool:
        """HAProxy sends it no new requests on purpose: drained, in maintenance, or weight 0."""
        return bool(self.haproxy) and (self.haproxy.startswith(("DRAIN", "MAINT")) or self.haproxy_weight == 0)

    @property
    def healthy(self) -> bool:
        """Reachable, every service active, and every probe answered."""
        return self.reachable and not self.error and all(s == "active" for s in self.services.values())

    def as_dict(self) -> dict:
        return {**asdict(self), "healthy": self.healthy}


def _probe_args(host: Host, redis: redis_client.Admin, stream_addresses: list[str]) -> dict:
    units = [u for g in host.groups for u in UNITS.get(g, ())]
    data_host = "database" in host.groups or "cache" in host.groups
    return {"units": list(dict.fromkeys(units)),
            "stream": str(stream_host.CURRENT) if "stream" in host.groups else None,
            "postgres": "database" in host.groups,
            "redis": redis.settings() if "cache" in host.groups else None,
            "stream_addresses": stream_addresses if data_host else []}


def stream_addresses(inv: Inventory, fleet: Fleet | None = None) -> list[str]:
    """The stream hosts' private addresses (roadie_private_address), the ones that are IP addresses
    (`fleet`: the inventory's, read here when not given)."""
    out = []
    for host in (fleet or Fleet.from_inventory(inv, partial=True)).stream:
        value = var_or(inv, host.name, "roadie_private_address", None)
        try:
            out.append(str(ipaddress.ip_address(str(value))))
        except ValueError:
            continue
    return out


def probe(host: Host, inv: Inventory, addresses: list[str] | None = None) -> HostStatus:
    """Status of one host; never raises for the host's own failures. `addresses`: the stream hosts'
    (default: read from the inventory when the host is a database or cache host)."""
    row = HostStatus(host=host.name, groups=list(host.groups), reachable=False)
    secret = ""
    if "cache" in host.groups:
        secret = redis_client.password(inv, host.name)
    if addresses is None and ("database" in host.groups or "cache" in host.groups):
        addresses = stream_addresses(inv)
    try:
        conn = ssh.connect(host)
    except RoadieError as exc:
        row.error = str(exc)
        return row
    try:
        args = _probe_args(host, redis_client.admin(inv, host.name), addresses or [])
        result = conn.run(remote.command(PROBE, json.dumps(args)), hide=True, warn=True,
                          in_stream=redis_client.stdin(secret), timeout=60)
        row.reachable = True
        if result.exited != 0:
            row.error = (result.stderr.strip().splitlines() or ["probe failed"])[-1][:200]
            return row
        data = json.loads(result.stdout.strip().splitlines()[-1])
    except Exception as exc:  # one host's failure is that host's row
        row.error = ssh.describe_failure(host, exc)
        return row
    finally:
        conn.close()
    if data.get("hostname") != host.name:
        row.error = f"answers as {data.get('hostname')!r}, not {host.name}"
    row.services = data.get("units", {})
    row.release = data.get("release")
    row.load1 = round(data["load"][0], 2)
    row.mem_used_pct = round(100 * (1 - data["mem_available"] / data["mem_total"]), 1)
    row.disk_used_pct = round(100 * data["disk_used"] / data["disk_total"], 1) if data["disk_total"] else None
    for key, prefix in (("pg", "pg"), ("redis", "redis")):
        part = data.get(key)
        if not part:
            continue
        if "error" in part:
            row.error = f"{key}: {part['error']}"
            continue
        if prefix == "pg":
            row.pg_role, row.pg_lag_bytes = part["role"], part["lag_bytes"]
            row.pg_stream_clients = part.get("stream_clients")
        else:
            row.redis_role, row.redis_memory, row.redis_clients = part["role"], part["used_memory"], part["clients"]
            row.redis_stream_clients = part.get("stream_clients")
    return row


def var_or(inv: Inventory, host: str, name: str, default: object) -> object:
    """A host variable the inventory may leave to the role's default."""
    try:
        return inv.host_var(host, name)
    except RoadieError:
        return default


Lease = tuple[lock.LockInfo | None, float]    # lock.status: the holder (None when free), the lock host's clock


@dataclass
class LockHostView:
    """What the lock host (the first balancer) says: HAProxy's servers, the deploy lease, the on-purpose drains.

    A part it could not read is None (servers: empty) with its error line in `errors`.
    """

    host: str = ""
    servers: dict[str, ServerState] = field(default_factory=dict)
    lease: Lease | None = None
    drained: dict[str, rotation.Drained] | None = None
    errors: list[str] = field(default_factory=list)
    haproxy_error: str = ""


def _cannot(host: Host, what: str, exc: BaseException) -> str:
    said = ssh.describe_failure(host, exc)
    return said if isinstance(exc, RoadieError) else f"cannot read {what} on {host.name}: {said}"


def lock_host_view(fleet: Fleet) -> LockHostView:
    """One connection to the lock host (the fleet's balancer); each part read on its own, so one failure
    does not hide the others. An empty view for a fleet without a balancer."""
    host = fleet.balancer
    if host is None:
        return LockHostView()
    view = LockHostView(host=host.name)
    try:
        conn = ssh.connect(host)
    except Exception as exc:  # the view says what it could not read
        view.haproxy_error = ssh.describe_failure(host, exc)
        view.errors.append(f"cannot read HAProxy's state, the deploy lease or the on-purpose drains on {host.name}: "
                           f"{view.haproxy_error}")
        return view
    with conn:
        try:
            view.servers = Balancer(conn).servers()
        except Exception as exc:
            view.haproxy_error = ssh.describe_failure(host, exc)
            view.errors.append(_cannot(host, "HAProxy's state", exc))
        try:
            view.lease = lock.status(conn)
        except Exception as exc:
            view.errors.append(_cannot(host, "the deploy lease", exc))
        try:
            view.drained = rotation.on_purpose(conn)
        except Exception as exc:
            view.errors.append(_cannot(host, "the on-purpose drains", exc))
    return view


def gather(inv: Inventory, pattern: str) -> tuple[list[HostStatus], LockHostView]:
    hosts = inv.select(pattern)
    fleet = Fleet.from_inventory(inv, partial=True)
    addresses = stream_addresses(inv, fleet) if any({"database", "cache"} & set(h.groups) for h in hosts) else []
    results = ssh.parallel(lambda job: job(), [lambda: lock_host_view(fleet)]
                           + [lambda h=h: probe(h, inv, addresses) for h in hosts], max_workers=32)
    view, rows = results[0], results[1:]
    drained = view.drained or {}
    for row in rows:
        if "stream" not in row.groups:
            continue
        state = view.servers.get(row.host)
        if state is not None:
            row.haproxy, row.haproxy_weight, row.haproxy_check = state.status, state.weight, state.check_status
            row.sessions = state.sessions
        elif view.haproxy_error:
            row.haproxy = "unknown"
        else:
            row.haproxy = "not in backend"
        if row.host in drained:
            row.drained_on_purpose = drained[row.host].describe()
    return rows, view
