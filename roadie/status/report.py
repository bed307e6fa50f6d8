"""What needs an operator's attention across the fleet (`fab status`), from the probes' rows (probe.py).

`attention` turns the rows, the deploy lease and the on-purpose drains into the problems an operator must
look at: a host out of rotation that nobody drained on purpose, mixed releases, a lapsed lease, a server
DOWN, two primaries.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from roadie.change import lock, rotation
from roadie.core import ssh
from roadie.core.cli import human_bytes
from roadie.core.errors import RoadieError
from roadie.core.fleet import Fleet
from roadie.core.inventory import Inventory
from roadie.status import probe
from roadie.status.probe import HostStatus, Lease

WARNING, CRITICAL = "warning", "critical"


@dataclass(frozen=True)
class Problem:
    """Something an operator must look at; `critical` when data or writes are at stake."""

    severity: str          # WARNING or CRITICAL
    host: str | None
    text: str

    def line(self) -> str:
        """One line for the terminal: "CRITICAL: ..." or "attention: ..."."""
        return f"{'CRITICAL' if self.severity == CRITICAL else 'attention'}: {' '.join(self.text.split())}"


@dataclass
class Report:
    """`fab status`: the rows and the problems."""

    rows: list[HostStatus]
    problems: list[Problem]

    def as_dict(self) -> dict:
        return {"hosts": [r.as_dict() for r in self.rows], "problems": [asdict(p) for p in self.problems]}


def check(inv: Inventory, pattern: str = "all") -> Report:
    """Every selected host's row and what needs attention across them."""
    rows, view = probe.gather(inv, pattern)
    problems = attention(rows, inv, view.lease, view.drained)
    problems += [Problem(WARNING, view.host, error) for error in view.errors]
    primaries = [r.host for r in rows if r.reachable and r.pg_role == "primary"]
    if len(primaries) > 1:
        problems += _fence_stale_primary(inv, primaries)
    return Report(rows, problems)


def _fence_stale_primary(inv: Inventory, primaries: list[str]) -> list[Problem]:
    """Two primaries: fence the one the audit log shows was failed over away from, at first contact."""
    from roadie.change.pipeline import lock_host
    from roadie.db import fencing

    try:
        with ssh.connect(lock_host(inv)) as conn:
            done = fencing.fence_at_first_contact(inv, primaries, conn)
    except RoadieError as exc:
        return [Problem(CRITICAL, None, f"could not fence the stale primary: {exc}")]
    if done is None:
        return [Problem(CRITICAL, None, "the audit log does not say which primary is stale: fence one by hand "
                                       "(stop and mask postgresql@15-main, see roles/postgresql/README.md)")]
    return [Problem(CRITICAL, None, done)]


def _lock_host_name(inv: Inventory) -> str:
    balancer = Fleet.from_inventory(inv, partial=True).balancer
    return balancer.name if balancer else "the lock host"


def _holder(info: lock.LockInfo) -> str:
    what = f"{info.operation} {info.release}".strip()
    return f"{info.owner} for {what}"


def _two_leaders(rows: list[HostStatus], inv: Inventory, service: str, role: str, group: str | None,
                 prefix: str) -> Problem | None:
    """CRITICAL when more than one host of `service` reports `role` (split brain), naming where the stream
    hosts' connections go (`prefix`_stream_clients) and what the inventory says."""
    leaders = [r for r in rows if r.reachable and getattr(r, f"{prefix}_role") == role]
    if len(leaders) < 2:
        return None
    counts = {r.host: getattr(r, f"{prefix}_stream_clients") for r in leaders}
    used = [f"{h} ({n} connections)" for h, n in counts.items() if n]
    unknown = [h for h, n in counts.items() if n is None]
    if len(used) == 1:
        where = f"the stream hosts write to {used[0]}"
    elif used:
        where = f"the stream hosts write to {' and '.join(used)}: their writes are split"
    else:
        where = "none of them has connections from the stream hosts"
    if unknown:
        where += f" ({', '.join(unknown)}: connections unknown)"
    listed = inv.groups.get(group, ()) if group else ()
    intended = f"; the inventory's {role}: {', '.join(listed)}" if listed else ""
    return Problem(CRITICAL, None, f"{len(leaders)} {service} hosts report role {role}: "
                                   f"{', '.join(r.host for r in leaders)}; {where}{intended}")


def attention(rows: list[HostStatus], inv: Inventory, lease: Lease | None,
              drained: dict[str, rotation.Drained] | None) -> list[Problem]:
    """What needs an operator, critical first: from the rows, the deploy lease (None: unknown) and the
    hosts drained on purpose (None: unknown).

    A stream host out of rotation is a problem unless it was drained on purpose or a change holds a
    live lease (a deploy or restart drains hosts as it goes).
    """
    problems: list[Problem] = []
    holder, now = lease if lease is not None else (None, 0.0)
    live = holder is not None and holder.expires_at > now
    if holder is not None and not live:
        problems.append(Problem(WARNING, None, f"deploy lease on {_lock_host_name(inv)} held by {_holder(holder)}, "
                                               f"lapsed {int(now - holder.expires_at)} s ago: its command is no "
                                               f"longer renewing it"))
    on_purpose = drained or {}
    stream = [r for r in rows if "stream" in r.groups and r.reachable]
    for r in (r for r in rows if "stream" in r.groups):
        state = r.haproxy
        if state in (None, "unknown"):
            continue
        mark = on_purpose.get(r.host)
        if state == "not in backend":
            problems.append(Problem(WARNING, r.host, f"{r.host} is not in HAProxy's backend: it takes no traffic"))
        elif r.out_of_rotation and mark is None and not live:
            shown = state + (", weight 0" if r.haproxy_weight == 0 and not state.startswith(("DRAIN", "MAINT"))
                             else "")
            problems.append(Problem(WARNING, r.host, f"{r.host} is out of rotation (HAProxy {shown}) and was not "
                                                     f"drained on purpose, nor does a change hold the lease: "
                                                     f"`fab undrain {r.host}` puts it back"))
        elif not r.out_of_rotation and mark is not None and state.startswith("UP"):
            problems.append(Problem(WARNING, r.host, f"{r.host} is in rotation (HAProxy {state}) but recorded as "
                                                     f"{mark.describe()}: `fab undrain {r.host}` clears the record"))
        if state.startswith("DOWN") and not (mark is not None and r.out_of_rotation):
            check = f", check {r.haproxy_check}" if r.haproxy_check else ""
            problems.append(Problem(WARNING, r.host, f"{r.host} is DOWN in HAProxy ({state}{check})"))
    releases = {r.host: r.release for r in stream}
    if len(set(releases.values())) > 1:
        during = f" while {_holder(holder)} holds the lease" if live else ""
        problems.append(Problem(WARNING, None, "the stream hosts run different releases: "
                                + " ".join(f"{h}={rel or 'none'}" for h, rel in releases.items()) + during))
    for args in (("PostgreSQL", "primary", "database_primary", "pg"), ("Redis", "master", None, "redis")):
        found = _two_leaders(rows, inv, *args)
        if found:
            problems.append(found)
    return sorted(problems, key=lambda p: p.severity != CRITICAL)


HEADERS = ["host", "groups", "reach", "release", "services", "haproxy", "sess", "load", "mem%", "disk%",
           "pg", "pg lag", "redis", "redis mem", "clients", "problem / note"]


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
            show(r.redis_clients),
            r.error or ("service not active" if not r.healthy else "") or (r.drained_on_purpose or ""),
        ])
    return out
