"""The whole fleet at a glance (`fab status`): one SSH round trip per host, all hosts at once.

Each host runs one small Python probe (every managed host has python3) that reports what its groups
make relevant: load, memory, disk, its services, the stream release, PostgreSQL's role and lag,
Redis's role, memory and clients. HAProxy's view of the stream hosts comes from the runtime API.
An unreachable host is a row that says so; the others still answer.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field

from roadie import ssh
from roadie.balancer import Balancer
from roadie.cli import human_bytes
from roadie.errors import RoadieError
from roadie.inventory import Host, Inventory

# The units that matter on a host, by inventory group.
UNITS = {
    "balancer": ("haproxy.service",),
    "stream": ("stream.service", "nginx.service"),
    "database": ("postgresql@15-main.service",),
    "cache": ("redis-server.service",),
}
REDIS_ADMIN_USER = "admin"
REDIS_PASSWORD_VAR = "vault_redis_admin_password"  # noqa: S105 - a variable name, not a value

_PROBE = r'''
import json, os, shutil, subprocess, sys
args = json.loads(sys.argv[1])
secret = sys.stdin.readline().rstrip("\n")
out = {"hostname": os.uname().nodename}
out["load"] = list(os.getloadavg())
mem = {}
for line in open("/proc/meminfo"):
    key, value = line.split(":", 1)
    mem[key] = int(value.split()[0]) * 1024
out["mem_total"] = mem["MemTotal"]
out["mem_available"] = mem["MemAvailable"]
disk = shutil.disk_usage("/")
out["disk_total"], out["disk_used"] = disk.total, disk.used
def run(cmd, env=None):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=20, env=env, cwd="/")
    return p.returncode, p.stdout.strip(), p.stderr.strip()
units = {}
for unit in args["units"]:
    units[unit] = run(["systemctl", "is-active", unit])[1] or "unknown"
out["units"] = units
if args.get("stream"):
    try:
        out["release"] = os.path.basename(os.readlink("/srv/stream/current"))
    except OSError:
        out["release"] = None
if args.get("postgres"):
    sql = ("SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN "
           "COALESCE(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), 0) ELSE "
           "COALESCE((SELECT max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)) FROM pg_stat_replication), 0) END, "
           "(SELECT count(*) FROM pg_stat_replication)")
    # As postgres through sudo: the deploy user may act as postgres on database hosts, never as root.
    code, stdout, stderr = run(["sudo", "-n", "-u", "postgres", "psql", "-XAtq", "-F", "|", "-d", "postgres",
                                "-c", sql])
    if code == 0 and stdout:
        standby, lag, replicas = stdout.split("|")
        out["pg"] = {"role": "replica" if standby == "t" else "primary", "lag_bytes": int(float(lag)),
                     "replicas": int(replicas)}
    else:
        out["pg"] = {"error": (stderr.splitlines() or ["no answer"])[-1][:160]}
if args.get("redis"):
    env = dict(os.environ, REDISCLI_AUTH=secret)
    code, stdout, stderr = run(["redis-cli", "--no-auth-warning", "--user", args["redis"]["user"], "-h", "127.0.0.1",
                                "-p", str(args["redis"]["port"]), "INFO"], env=env)
    info = dict(l.split(":", 1) for l in stdout.splitlines() if ":" in l and not l.startswith("#"))
    if code == 0 and "role" in info:
        out["redis"] = {"role": info["role"], "used_memory": int(info.get("used_memory", 0)),
                        "clients": int(info.get("connected_clients", 0))}
    else:
        out["redis"] = {"error": ((stderr or stdout).splitlines() or ["no answer"])[-1][:160]}
print(json.dumps(out))
'''


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
    sessions: int | None = None
    load1: float | None = None
    mem_used_pct: float | None = None
    disk_used_pct: float | None = None
    pg_role: str | None = None
    pg_lag_bytes: int | None = None
    redis_role: str | None = None
    redis_memory: int | None = None
    redis_clients: int | None = None

    @property
    def healthy(self) -> bool:
        """Reachable, every service active, and every probe answered."""
        return self.reachable and not self.error and all(s == "active" for s in self.services.values())

    def as_dict(self) -> dict:
        return {**asdict(self), "healthy": self.healthy}


def _probe_args(host: Host, redis_port: int) -> dict:
    units = [u for g in host.groups for u in UNITS.get(g, ())]
    return {"units": list(dict.fromkeys(units)), "stream": "stream" in host.groups,
            "postgres": "database" in host.groups,
            "redis": {"user": REDIS_ADMIN_USER, "port": redis_port} if "cache" in host.groups else None}


def probe(host: Host, inv: Inventory) -> HostStatus:
    """Status of one host; never raises for the host's own failures."""
    row = HostStatus(host=host.name, groups=list(host.groups), reachable=False)
    secret = ""
    if "cache" in host.groups:
        secret = inv.host_var(host.name, REDIS_PASSWORD_VAR)
    try:
        conn = ssh.connect(host)
    except RoadieError as exc:
        row.error = str(exc)
        return row
    try:
        args = _probe_args(host, int(var_or(inv, host.name, "redis_port", 6379)))
        result = conn.run(ssh.python_command(_PROBE, json.dumps(args)), hide=True, warn=True, in_stream=io.StringIO(
            secret + "\n"), timeout=60)
        row.reachable = True
        if result.exited != 0:
            row.error = (result.stderr.strip().splitlines() or ["probe failed"])[-1][:200]
            return row
        data = json.loads(result.stdout.strip().splitlines()[-1])
    except Exception as exc:  # noqa: BLE001 - one host's failure is that host's row
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
        else:
            row.redis_role, row.redis_memory, row.redis_clients = part["role"], part["used_memory"], part["clients"]
    return row


def var_or(inv: Inventory, host: str, name: str, default: object) -> object:
    """A host variable the inventory may leave to the role's default."""
    try:
        return inv.host_var(host, name)
    except RoadieError:
        return default


def _balancer_view(inv: Inventory) -> tuple[dict, str]:
    """HAProxy's state of the stream backend, or an error line when the balancer cannot say."""
    balancers = inv.groups.get("balancer") or ()
    if not balancers:
        return {}, ""
    host = inv.hosts[balancers[0]]
    try:
        with ssh.connect(host) as conn:
            return Balancer(conn).servers(), ""
    except Exception as exc:  # noqa: BLE001
        return {}, ssh.describe_failure(host, exc)


def fleet(inv: Inventory, pattern: str = "all") -> list[HostStatus]:
    """Every selected host's row, probed in parallel, plus HAProxy's view of the stream hosts."""
    hosts = inv.select(pattern)
    rows_and_view = ssh.parallel(lambda job: job(), [lambda: _balancer_view(inv)]
                                 + [lambda h=h: probe(h, inv) for h in hosts], max_workers=32)
    (servers, lb_error), rows = rows_and_view[0], rows_and_view[1:]
    for row in rows:
        if "stream" not in row.groups:
            continue
        state = servers.get(row.host)
        if state is not None:
            row.haproxy = state.status
            row.sessions = state.sessions
        elif lb_error:
            row.haproxy = "unknown"
        else:
            row.haproxy = "not in backend"
    return rows


HEADERS = ["host", "groups", "reach", "release", "services", "haproxy", "sess", "load", "mem%", "disk%",
           "pg", "pg lag", "redis", "redis mem", "clients", "problem"]


def table_rows(rows: list[HostStatus]) -> list[list[str]]:
    """Rows for cli.table: '-' where a column does not apply to the host."""
    def show(value: object) -> str:
        return "-" if value is None else str(value)

    out = []
    for r in rows:
        bad = [f"{u.removesuffix('.service')}={s}" for u, s in r.services.items() if s != "active"]
        services = "all active" if r.services and not bad else (" ".join(bad) or "-")
        out.append([
            r.host, ",".join(g for g in r.groups if not g.startswith("database_")) or "-",
            "yes" if r.reachable else "NO", show(r.release), services if r.reachable else "-",
            show(r.haproxy), show(r.sessions), show(r.load1), show(r.mem_used_pct), show(r.disk_used_pct),
            show(r.pg_role), human_bytes(r.pg_lag_bytes),
            show(r.redis_role), human_bytes(r.redis_memory),
            show(r.redis_clients), r.error or ("" if r.healthy else "service not active"),
        ])
    return out
