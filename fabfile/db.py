"""The database: backups, restore checks, replication and failover (`db.*`)."""

from __future__ import annotations

from invoke import Collection

from roadie.core.cli import Terminal, emit_json, human_bytes, prefixed, table
from roadie.core.errors import RoadieError
from roadie.db import commands
from roadie.db.failover import DEFAULT_MAX_LAG

from .common import DEPLOY_HELP, INVENTORY_HELP, task

DB_HELP = {"inventory": INVENTORY_HELP, "json": "Print JSON."}


@task(help={"inventory": INVENTORY_HELP, "message": DEPLOY_HELP["message"], "yes": DEPLOY_HELP["yes"]})
def backup(c, inventory_=None, message=None, yes=False):
    """Take a base backup on the primary now (the scheduled one's script), with its size and duration."""
    taken = commands.backup(inventory_, message=message, terminal=Terminal(yes))
    print(prefixed(taken.host, f"backup {taken.backup.name}: {human_bytes(taken.backup.size_bytes)} "
                               f"({taken.backup.size_bytes} bytes) in {taken.duration_s:.1f} s"))


@task(help=DB_HELP)
def backups(c, inventory_=None, json=False):
    """List the primary's base backups with their ages and sizes."""
    primary, found = commands.backups(inventory_)
    if json:
        emit_json([b.as_dict() for b in found])
        return
    print(table(commands.BACKUP_HEADERS, commands.backup_rows(found)))
    if not found:
        print(f"{primary}: no base backups")


@task(help={**DB_HELP, "backup": "Backup name (default: the newest).",
            "on": "Host to restore on (default: the first replica)."})
def restore_check(c, inventory_=None, backup=None, on=None, json=False):
    """Restore a backup on a replica (or --on HOST) and compare key tables with the primary at backup time."""
    restored = commands.restore_check(inventory_, backup, on, as_json=json)
    if json:
        emit_json(restored.check.as_dict())
    else:
        for line in restored.lines():
            print(prefixed(restored.check.host, line))
    if restored.problem:
        raise RoadieError(restored.problem)


@task(help=DB_HELP)
def replication(c, inventory_=None, json=False):
    """Show each database host's role, WAL positions, lag and replication slots."""
    seen = commands.replication(inventory_)
    if json:
        emit_json([s.as_dict() for s in seen.states])
    else:
        print(table(commands.NODE_HEADERS, commands.node_rows(seen.states)))
        slots = commands.slot_rows(seen.states)
        if slots:
            print()
            print(table(commands.SLOT_HEADERS, slots))
    if seen.problem:
        raise RoadieError(seen.problem)


@task(help={
    "inventory": INVENTORY_HELP, "yes": "Required: promote without asking (there is no dry run of a failover).",
    "force": "Go on when the lag is above --max-lag or unreadable, or the old primary is unreachable.",
    "max_lag": f"Refuse above this replication lag in bytes (default {DEFAULT_MAX_LAG}).",
    "to": "Replica to promote (default: the first of database_replica).",
    "batch": DEPLOY_HELP["batch"], "min_serving": DEPLOY_HELP["min_serving"], "message": DEPLOY_HELP["message"]})
def failover(c, inventory_=None, yes=False, force=False, max_lag=None, to=None, batch="1", min_serving="1",
             message=None):
    """Promote the replica, fence the old primary, repoint and restart the stream hosts (needs --yes)."""
    done = commands.failover(inventory_, force=force, max_lag=max_lag, to=to, batch=batch, min_serving=min_serving,
                             message=message, terminal=Terminal(yes))
    for line in done.lines():
        print(line)


ns = Collection("db", backup, backups, restore_check, replication, failover)
