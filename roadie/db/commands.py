"""What fab's db tasks do around roadie.db: check input, ask, guard, audit, and the rows they show."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from roadie.change import audit, rollout
from roadie.core import inventory, ssh
from roadie.core.cli import Terminal, human_age, human_bytes
from roadie.core.errors import RoadieError
from roadie.core.fleet import Fleet
from roadie.core.inventory import Inventory
from roadie.db import backups as db_backups
from roadie.db import failover as db_failover
from roadie.db import replication as db_replication
from roadie.db import restore_check as db_restore
from roadie.db.topology import topology
from roadie.deploy import maintenance
from roadie.deploy.stream_fleet import options
from roadie.deploy.types import Reporter


def record(inv: Inventory, action: str, result: str, duration_s: float, **detail: object) -> None:
    """One audit record on the lock host for a database command that takes no lock."""
    conn = ssh.connect(Fleet.from_inventory(inv).balancer)
    try:
        audit.record(conn, audit.event(action, result=result, duration_s=duration_s, **detail))
    finally:
        conn.close()


# ------------------------------------------------------------------ db.backup, db.backups
@dataclass
class Taken:
    """A base backup `fab db.backup` took, on which host, in how long."""

    host: str
    backup: db_backups.Backup
    duration_s: float


def backup(inventory_name: str | None, *, message: str | None, terminal: Terminal) -> Taken:
    """Say what happens, ask, then take a base backup on the primary under the lock."""
    inv = inventory.load(inventory_name)
    primary = topology(inv).primary
    terminal.say(f"db.backup: base backup on {primary.name} with {db_backups.BACKUP_SERVICE} (records the key tables' "
                 "reference; retention may remove the oldest backup)")
    terminal.confirm(f"take a base backup on {primary.name}")
    with maintenance.Guarded(inv, "db.backup", hosts=[primary.name], message=message or "") as change:
        result = db_backups.backup(inv, Reporter())
        change.detail = {"backup": result.backup.name, "size_bytes": result.backup.size_bytes}
    return Taken(primary.name, result.backup, result.duration_s)


def backups(inventory_name: str | None) -> tuple[str, list[db_backups.Backup]]:
    """The primary's name and its base backups, oldest first."""
    primary = topology(inventory.load(inventory_name)).primary
    conn = ssh.connect(primary)
    try:
        return primary.name, db_backups.list_backups(conn)
    finally:
        conn.close()


BACKUP_HEADERS = ["backup", "age", "size", "finished", "first WAL", "reference"]


def backup_rows(backups: list[db_backups.Backup]) -> list[tuple]:
    """`fab db.backups`' table: newest first."""
    return [(b.name, human_age(b.age_s), human_bytes(b.size_bytes), b.finished_at, b.start_wal,
             "yes" if b.has_reference else "no") for b in reversed(backups)]


# ------------------------------------------------------------------ db.restore-check
@dataclass
class Restored:
    """`fab db.restore-check`: what the check found, and the line to fail with when it did not pass."""

    check: db_restore.RestoreCheck

    def lines(self) -> list[str]:
        """Each key table against its reference, then how long it took (to be prefixed with the host)."""
        check = self.check
        lines = []
        for name, got in sorted(check.tables.items()):
            want = check.reference.get(name, {})
            same = "ok" if got == want else "MISMATCH"
            lines.append(f"{name}: {got['rows']} rows, checksum {got['checksum']} "
                         f"(recorded {want.get('rows')}, {want.get('checksum')}) {same}")
        lines.append(f"backup {check.backup}: restored in {check.restore_s:.0f} s (copy "
                     f"{human_bytes(check.copy_bytes)} in {check.copy_s:.1f} s, total {check.duration_s:.1f} s)")
        return lines

    @property
    def problem(self) -> str:
        check = self.check
        if check.ok:
            return ""
        return f"RESTORE CHECK FAILED: backup {check.backup} on {check.host}: {check.problems[0]}"


def restore_check(inventory_name: str | None, backup_name: str | None, on: str | None, as_json: bool) -> Restored:
    """Restore a backup on another host and compare its key tables; the result goes into the audit log
    either way. Progress goes to stderr with --json. A RoadieError when the check could not run."""
    inv = inventory.load(inventory_name)
    db_restore.restore_target(inv, backup_name, on)   # bad input fails here, before any host
    report = Reporter(stream=sys.stderr if as_json else None)
    started = time.monotonic()
    try:
        check = db_restore.restore_check(inv, report, backup_name, on)
    except RoadieError as exc:
        record(inv, "db.restore-check", "failed", error=str(exc), duration_s=time.monotonic() - started)
        raise RoadieError(f"RESTORE CHECK FAILED: {exc}") from None
    record(inv, "db.restore-check", "ok" if check.ok else "failed", backup=check.backup, restored_on=check.host,
           restore_s=check.restore_s, problems=check.problems, duration_s=check.duration_s)
    return Restored(check)


# ------------------------------------------------------------------ db.replication
@dataclass
class Replication:
    """`fab db.replication`: each database host's state, and the line to fail with when one is unreachable."""

    states: list[db_replication.NodeState]

    @property
    def problem(self) -> str:
        down = [s.host for s in self.states if not s.reachable]
        return f"{len(down)} database host(s) unreachable: {', '.join(down)}" if down else ""


def replication(inventory_name: str | None) -> Replication:
    """Each database host's role, WAL positions, lag and replication slots."""
    return Replication(db_replication.replication(inventory.load(inventory_name)))


NODE_HEADERS = ["host", "role", "current/received", "sent", "replay", "lag bytes", "lag s", "state"]
SLOT_HEADERS = ["host", "slot", "state", "restart_lsn", "retained WAL", "wal_status"]


def node_rows(states: list[db_replication.NodeState]) -> list[tuple]:
    return [(s.host, s.role, s.current_lsn or "-", s.sent_lsn or "-", s.replay_lsn or "-",
             "-" if s.lag_bytes is None else s.lag_bytes, "-" if s.lag_s is None else s.lag_s,
             s.state or s.error or "-") for s in states]


def slot_rows(states: list[db_replication.NodeState]) -> list[tuple]:
    return [(s.host, sl["slot"], "active" if sl["active"] else "INACTIVE", sl["restart_lsn"] or "-",
             "-" if sl["retained_bytes"] is None else human_bytes(sl["retained_bytes"]), sl["wal_status"] or "-")
            for s in states for sl in s.slots]


# ------------------------------------------------------------------ db.failover
@dataclass
class FailedOver:
    """A failover that went through, and the inventory it changed."""

    result: db_failover.FailoverResult
    inventory_name: str

    def lines(self) -> list[str]:
        """How long it took, what to look at, and the inventory change to commit."""
        done = (f"failover: done in {self.result.duration_s:.1f} s "
                + ", ".join(f"{k} {v}" for k, v in self.result.timings.items()))
        return [done, *(f"WARNING: {note}" for note in self.result.notes),
                *db_failover.inventory_change(self.result.plan, self.inventory_name)]


def failover(inventory_name: str | None, *, force: bool, max_lag: object, to: str | None, batch: str,
             min_serving: str, message: str | None, terminal: Terminal) -> FailedOver:
    """Check the flags and the plan before any host, show the plan, ask, then fail over."""
    opts = options(batch, False, min_serving, 60, 60, message)
    lag = db_failover.check_max_lag(db_failover.DEFAULT_MAX_LAG if max_lag is None else max_lag)  # before any host
    inv = inventory.load(inventory_name)
    plan = db_failover.plan_failover(inv, lag, force, to)
    rollout.plan("restart", plan.stream_hosts, opts.batch, False, opts.min_serving)
    for line in plan.describe():
        terminal.say(line)
    terminal.confirm(f"promote {plan.new_primary} and fence {plan.old_primary}")
    return FailedOver(db_failover.failover(inv, plan, Reporter(), opts), inv.name)
