"""Failover: promote a replica and fence the old primary.

plan -> deploy lock -> lag check -> stop the old primary (fast shutdown: its walsender ships the last WAL
first) and fence it (unit masked, marker file) -> wait until the replica has replayed the old primary's
shutdown checkpoint -> pg_promote -> rewrite the database host order in every stream host's env file (new
primary first) -> rolling restart through the drain path -> audit line -> the inventory change the
operator commits.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from roadie.change.pipeline import Change
from roadie.core import ssh
from roadie.core.errors import RoadieError
from roadie.core.fleet import Fleet
from roadie.core.inventory import Host, Inventory
from roadie.db import client, replication
from roadie.db.client import AS_POSTGRES
from roadie.db.fencing import DATA_DIR, FENCE_FILE, PG_BIN, PG_UNIT, fence_host
from roadie.db.topology import Report, topology
from roadie.db.wal import parse_lsn
from roadie.deploy import stream_host
from roadie.deploy.types import Options

if TYPE_CHECKING:
    from roadie.core.ssh import HostConnection

DEFAULT_MAX_LAG = 16 * 1024 * 1024


def check_max_lag(value: object) -> int:
    """--max-lag as a whole number of bytes >= 0."""
    try:
        lag = int(str(value))
    except ValueError:
        raise RoadieError(f"--max-lag must be a whole number of bytes, got {value!r}") from None
    if lag < 0:
        raise RoadieError(f"--max-lag must be >= 0, got {lag}")
    return lag


def lag_verdict(lag_bytes: int | None, max_lag: int, force: bool) -> str:
    """Why the failover may go on ("" when the lag is within the threshold); RoadieError when it may not."""
    if lag_bytes is None:
        if not force:
            raise RoadieError("replication lag cannot be read (is the old primary down?); "
                              "a failover now may lose writes: pass --force to go on anyway")
        return "replication lag unknown; going on because of --force"
    if lag_bytes > max_lag:
        if not force:
            raise RoadieError(f"replication lag {lag_bytes} bytes is above --max-lag {max_lag}; "
                              "wait for the replica to catch up, or pass --force")
        return f"replication lag {lag_bytes} bytes is above --max-lag {max_lag}; going on because of --force"
    return ""


@dataclass
class FailoverPlan:
    old_primary: str
    new_primary: str
    new_primary_address: str
    stream_hosts: list[str]
    max_lag: int
    force: bool
    old_primary_address: str = ""

    def describe(self) -> list[str]:
        return [
            f"failover: promote {self.new_primary} ({self.new_primary_address}); fence {self.old_primary}",
            f"  1. refuse if {self.new_primary}'s replication lag is above {self.max_lag} bytes or unknown"
            + (" (--force: go on anyway)" if self.force else ""),
            f"  2. stop PostgreSQL on {self.old_primary} (fast shutdown), mask its unit, write {FENCE_FILE}",
            f"  3. wait until {self.new_primary} has replayed everything {self.old_primary} wrote; pg_promote",
            f"  4. put {self.new_primary} first in STREAM_DATABASE_URL on {', '.join(self.stream_hosts)} and "
            f"remove {self.old_primary} from it; rolling restart through the drain path",
            "  5. audit line; print the inventory change to commit",
        ]


def plan_failover(inv: Inventory, max_lag: object = DEFAULT_MAX_LAG, force: bool = False,
                  to: str | None = None) -> FailoverPlan:
    """What a failover will do, checked against the inventory before any host is touched."""
    lag = check_max_lag(max_lag)
    topo = topology(inv)
    if not topo.replicas:
        raise RoadieError("database_replica is empty: there is no replica to promote")
    if to is None:
        new = topo.replicas[0]
    else:
        new = next((r for r in topo.replicas if r.name == to), None)
        if new is None:
            raise RoadieError(f"--to {to!r} is not in database_replica "
                              f"({', '.join(r.name for r in topo.replicas)})")
    address = str(inv.host_var(new.name, "roadie_private_address"))
    stream = [h.name for h in inv.group("stream")]
    old_address = str(inv.host_var(topo.primary.name, "roadie_private_address"))
    return FailoverPlan(topo.primary.name, new.name, address, stream, lag, force, old_address)


def repoint_stream_host(conn: HostConnection, address: str, port: int = 5432) -> bool:
    """Put `address` first among the database hosts of the host's env file; True if it changed.

    Through the streaming role's checked wrapper (`stream-task use-database`), which only reorders the
    hosts already listed (atomic rename, same owner and mode): the deploy user cannot point the service
    anywhere else. The port stays as the file has it.
    """
    out = client.run(conn, f"sudo -n {stream_host.TASK_WRAPPER} use-database {shlex.quote(address)}",
                     what="pointing the env file at the new primary", timeout=60)
    return json.loads(out.stdout.strip().splitlines()[-1])["changed"]


def forget_old_primary(conn: HostConnection, address: str) -> bool:
    """Remove a failed-over primary from the host's env file (never its last database host), so that no
    blip on the new primary sends writes back to it; True if it changed. Provisioning, after the
    inventory names the new roles, writes the list again."""
    out = client.run(conn, f"sudo -n {stream_host.TASK_WRAPPER} forget-database {shlex.quote(address)}",
                     what="removing the old primary from the env file", timeout=60)
    return json.loads(out.stdout.strip().splitlines()[-1])["changed"]


@dataclass
class FailoverResult:
    plan: FailoverPlan
    old_primary_fenced: bool
    old_final_lsn: str | None
    promoted_at_lsn: str
    duration_s: float
    timings: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _fence(conn: HostConnection, plan: FailoverPlan, report: Report) -> str:
    """Stop the old primary (fast), mask its unit, write the marker; the shutdown checkpoint's LSN."""
    fence_host(conn, plan.new_primary, "fab db.failover")
    report(f"stopped, unit masked, fenced ({FENCE_FILE})", plan.old_primary, event="fenced")
    control = client.run(conn, f"{AS_POSTGRES}{PG_BIN}/pg_controldata {DATA_DIR}",
                         what="reading pg_controldata", timeout=60).stdout
    state = re.search(r"^Database cluster state:\s*(.+)$", control, re.M)
    checkpoint = re.search(r"^Latest checkpoint location:\s*([0-9A-F/]+)$", control, re.M)
    if not state or state.group(1).strip() != "shut down" or not checkpoint:
        raise RoadieError(f"{plan.old_primary}: cluster is not cleanly shut down "
                          f"({state.group(1).strip() if state else 'unknown state'}); not promoting")
    return checkpoint.group(1)


def _wait_replayed(conn: HostConnection, lsn: str, timeout: float) -> str:
    want = parse_lsn(lsn)
    deadline = time.monotonic() + timeout
    replay = "0/0"
    while time.monotonic() < deadline:
        replay = client.psql(conn, "SELECT pg_last_wal_replay_lsn()", what="reading the replay position") or "0/0"
        if parse_lsn(replay) >= want:
            return replay
        time.sleep(0.2)
    raise RoadieError(f"{client.host_name(conn)}: replayed only up to {replay} of the old primary's {lsn} after "
                      f"{timeout:.0f} s; not promoting (the old primary stays fenced)")


def failover(inv: Inventory, plan: FailoverPlan, report: Report, options: Options,
             rolling_restart: Callable | None = None, wait_timeout: float = 120) -> FailoverResult:
    """Run a failover plan inside the change pipeline (lease with heartbeat, audit record, interrupts)."""
    from roadie.deploy import maintenance

    restart = rolling_restart or maintenance.rolling_restart
    started = time.monotonic()
    timings: dict[str, float] = {}
    notes: list[str] = []
    fleet = Fleet.from_inventory(inv)
    with Change(fleet.balancer, "db.failover", hosts=[plan.old_primary, plan.new_primary, *plan.stream_hosts],
                message=options.message or f"promote {plan.new_primary}", report=report,
                ttl=fleet.lease_ttl) as change:
        change.detail.update(old_primary=plan.old_primary, new_primary=plan.new_primary, forced=plan.force,
                             timings=timings)
        return _failover(inv, plan, report, options, restart, wait_timeout, change, timings, notes, started)


def _failover(inv: Inventory, plan: FailoverPlan, report: Report, options: Options, restart: Callable,
              wait_timeout: float, change: Change, timings: dict[str, float], notes: list[str],
              started: float) -> FailoverResult:
    fleet = Fleet.from_inventory(inv)
    outcome = None
    new_conn = old_conn = None
    try:
        new_conn = ssh.connect(inv.hosts[plan.new_primary])
        try:
            old_conn = ssh.connect(inv.hosts[plan.old_primary])
        except RoadieError as exc:
            if not plan.force:
                raise RoadieError(f"old primary unreachable ({exc}); it cannot be fenced: pass --force to promote "
                                  f"{plan.new_primary} anyway, and keep {plan.old_primary} from starting") from None
            notes.append(f"{plan.old_primary} unreachable, NOT fenced: keep it from starting PostgreSQL again")
            report(f"unreachable, not fenced; going on because of --force: {exc}", plan.old_primary, event="warn")
        if not client.is_in_recovery(new_conn):
            raise RoadieError(f"{plan.new_primary} is not a replica (not in recovery); nothing changed")
        states = {s.host: s for s in replication.replication(inv)}
        lag = states[plan.new_primary].lag_bytes if old_conn is not None else None
        verdict = lag_verdict(lag, plan.max_lag, plan.force)
        report(verdict or f"replication lag {lag} bytes (max {plan.max_lag})", plan.new_primary, event="lag")
        final_lsn = None
        if old_conn is not None:
            t = time.monotonic()
            final_lsn = _fence(old_conn, plan, report)
            timings["stop_and_fence_s"] = round(time.monotonic() - t, 2)
            t = time.monotonic()
            replayed = _wait_replayed(new_conn, final_lsn, wait_timeout)
            timings["catch_up_s"] = round(time.monotonic() - t, 2)
            report(f"replayed up to {replayed} (old primary's shutdown checkpoint {final_lsn})", plan.new_primary,
                   event="caught_up")
        t = time.monotonic()
        promoted = client.psql(new_conn, "SELECT pg_promote(true, 60)", what="pg_promote")
        if promoted != "t" or client.is_in_recovery(new_conn):
            raise RoadieError(f"{plan.new_primary}: pg_promote did not finish within 60 s")
        promoted_lsn = client.psql(new_conn, "SELECT pg_current_wal_lsn()", what="reading the new primary's position")
        timings["promote_s"] = round(time.monotonic() - t, 2)
        timings["writes_blocked_s"] = round(sum(timings.values()), 2)
        report(f"promoted at {promoted_lsn}; accepts writes", plan.new_primary, event="promoted")
        t = time.monotonic()

        def repoint(host: Host) -> tuple[str, bool]:
            conn = ssh.connect(host)
            try:
                changed = repoint_stream_host(conn, plan.new_primary_address)
                # The old primary is no fallback: a blip on the new one must never send writes back to it.
                forgot = bool(plan.old_primary_address) and forget_old_primary(conn, plan.old_primary_address)
                return host.name, forgot or changed
            finally:
                conn.close()

        for name, changed in ssh.parallel(repoint, fleet.stream):
            report(f"STREAM_DATABASE_URL: {plan.new_primary} only, {plan.old_primary} removed"
                   + ("" if changed else " (already)"), name, event="repointed")
        outcome = restart(fleet, options, report, change=change)
        timings["repoint_and_restart_s"] = round(time.monotonic() - t, 2)
        return FailoverResult(plan, old_conn is not None, final_lsn, promoted_lsn, time.monotonic() - started,
                              timings, notes)
    finally:
        change.detail["restart_ok"] = bool(outcome and outcome.ok)
        for conn in (new_conn, old_conn):
            if conn is not None:
                conn.close()


def inventory_change(plan: FailoverPlan, inventory_name: str) -> list[str]:
    """What the operator commits after a failover, and how the old primary comes back as a replica."""
    return [
        f"inventory {inventory_name}: move {plan.new_primary} to database_primary and {plan.old_primary} to "
        "database_replica, then commit:",
        "    database_primary:",
        "      hosts:",
        f"        {plan.new_primary}:",
        "    database_replica:",
        "      hosts:",
        f"        {plan.old_primary}:",
        f"rebuild {plan.old_primary} as a replica of {plan.new_primary} (roles/postgresql/README.md, "
        "\"After a failover\"):",
        f"    ssh {plan.old_primary}: systemctl unmask {PG_UNIT}; mv {DATA_DIR} {DATA_DIR}.fenced-$(date +%s); "
        f"rm {FENCE_FILE}",
        "    ansible-playbook playbooks/database.yml   # both hosts: the primary's pg_hba learns the new replica",
        "then apply the stream tier (ansible-playbook playbooks/stream.yml) so its env files match the inventory.",
    ]


