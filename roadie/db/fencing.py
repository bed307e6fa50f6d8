"""Fencing a primary: stopped, unit masked, marker file; also one a forced failover could not fence, when
it comes back as a second primary."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from roadie import remote
from roadie.change import lock
from roadie.core import contract, ssh
from roadie.core.inventory import Inventory
from roadie.db import client

if TYPE_CHECKING:
    from roadie.core.ssh import HostConnection

PG_UNIT = contract.PG_UNIT
PG_BIN = contract.PG_BIN
DATA_DIR = contract.PG_DATA_DIR
FENCE_FILE = contract.PG_FENCE_FILE   # the deploy user's state directory (common role)
FENCE_PROGRAM = "fence_marker.py"     # roadie/remote/: writes the fence marker


def fence_host(conn: HostConnection, new_primary: str, reason: str) -> None:
    """Stop PostgreSQL (fast), mask its unit and write the fence marker: the host takes no writes again
    until an operator rebuilds it as a replica."""
    client.run(conn, f"sudo -n systemctl stop {PG_UNIT}", what="stopping PostgreSQL", timeout=180)
    client.run(conn, f"sudo -n systemctl mask {PG_UNIT}", what="masking the PostgreSQL unit", timeout=60)
    marker = json.dumps({"fenced_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "by": lock.who(),
                         "reason": reason, "new_primary": new_primary})
    client.run(conn, remote.command(FENCE_PROGRAM, FENCE_FILE, marker), what="writing the fence marker")


def stale_primary(records: list[dict], primaries: list[str]) -> dict | None:
    """The last successful failover's record when its old primary is among `primaries` again."""
    for rec in reversed(records):
        if rec.get("action") == "db.failover" and rec.get("result") == "ok":
            return rec if rec.get("old_primary") in primaries and rec.get("new_primary") in primaries else None
    return None


def fence_at_first_contact(inv: Inventory, primaries: list[str], lock_conn: HostConnection) -> str | None:
    """When two PostgreSQL hosts claim to be primary and the fleet's audit log shows one of them was failed
    over away from (a forced failover could not fence it), fence that one now, before anything else
    touches it; what was done, or None when the log does not say which one is stale."""
    from roadie.change import audit

    rec = stale_primary(audit.parse(audit.fetch(lock_conn)), primaries)
    if rec is None:
        return None
    old, new = rec["old_primary"], rec["new_primary"]
    with ssh.connect(inv.hosts[old]) as conn:
        fence_host(conn, new, f"fenced at first contact: failed over to {new} at {rec.get('host_ts') or rec['ts']}")
    audit.record(lock_conn, audit.event("db.fence", result="ok", hosts=[old], old_primary=old, new_primary=new,
                                        reason="a failed-over primary came back"))
    return (f"{old} was failed over to {new} at {rec.get('host_ts') or rec['ts']} but came back as a primary: "
            f"fenced it now (stopped, masked, {FENCE_FILE})")
