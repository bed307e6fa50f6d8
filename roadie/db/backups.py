"""Base backups on the primary: the complete ones it holds, and one taken now with the role's service."""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from roadie import remote
from roadie.core import contract, ssh
from roadie.core.errors import RoadieError
from roadie.core.inventory import Inventory
from roadie.db import client
from roadie.db.client import AS_POSTGRES
from roadie.db.topology import Report, topology

if TYPE_CHECKING:
    from roadie.core.ssh import HostConnection

BACKUP_DIR = contract.PG_BACKUP_DIR
BASE_DIR = contract.PG_BASE_BACKUP_DIR
BACKUP_SERVICE = "pg-base-backup.service"
LIST_BACKUPS_PROGRAM = "list_backups.py"   # roadie/remote/: the complete base backups on a host
BACKUP_NAME = re.compile(r"[0-9]{8}T[0-9]{6}Z")


@dataclass
class Backup:
    """One base backup on the primary."""

    name: str
    size_bytes: int
    started_at: str
    finished_at: str
    start_wal: str
    age_s: float
    has_reference: bool
    sha256: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def list_backups(conn: HostConnection) -> list[Backup]:
    """The complete base backups on a host, oldest first."""
    out = client.run(conn, AS_POSTGRES + remote.command(LIST_BACKUPS_PROGRAM, BASE_DIR),
                     what="listing base backups", timeout=60)
    return [Backup(**b) for b in json.loads(out.stdout.strip().splitlines()[-1])]


@dataclass
class BackupResult:
    backup: Backup
    duration_s: float


def backup(inv: Inventory, report: Report) -> BackupResult:
    """Take a base backup on the primary now, with the role's own service (the same as the timer's)."""
    primary = topology(inv).primary
    conn = ssh.connect(primary)
    try:
        if client.is_in_recovery(conn):
            raise RoadieError(f"{primary.name} is in recovery (a replica): is database_primary up to date?")
        before = {b.name for b in list_backups(conn)}
        report(f"starting {BACKUP_SERVICE}", primary.name)
        started = time.monotonic()
        result = conn.run(f"sudo -n systemctl start {BACKUP_SERVICE}", hide=True, warn=True, in_stream=False,
                          timeout=3600)
        duration = time.monotonic() - started
        if result.exited != 0:
            journal = conn.run(f"journalctl -u {BACKUP_SERVICE} -n 3 --no-pager -o cat", hide=True,
                               warn=True, in_stream=False).stdout.strip().splitlines()
            raise RoadieError(f"{primary.name}: base backup failed: {journal[-1] if journal else 'see the journal'}")
        new = [b for b in list_backups(conn) if b.name not in before]
        if not new:
            raise RoadieError(f"{primary.name}: {BACKUP_SERVICE} succeeded but wrote no new backup")
        return BackupResult(new[-1], duration)
    finally:
        conn.close()
