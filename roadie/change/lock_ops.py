"""What `fab lock.status` and `fab lock.release` do: read the deploy lock, or break it with an audit record.

The lock and the fleet's audit log live on the lock host, the inventory's first balancer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from roadie.change import audit, lock
from roadie.core import inventory, ssh
from roadie.core.errors import RoadieError
from roadie.core.fleet import Fleet
from roadie.core.inventory import Host


def lock_host(inventory_name: str | None) -> Host:
    """The host that keeps the deploy lock and the fleet's audit log (the first balancer)."""
    return Fleet.from_inventory(inventory.load(inventory_name)).balancer


@dataclass
class LockState:
    """Who holds the deploy lock (None: nobody), as of the lock host's clock."""

    holder: lock.LockInfo | None
    now: float

    def describe(self) -> str:
        return "free" if self.holder is None else self.holder.describe(self.now)

    def as_dict(self) -> dict | None:
        """The holder for --json, without the token that lets its owner release the lock."""
        return None if self.holder is None else {**vars(self.holder), "token": None}


def state(inventory_name: str | None) -> LockState:
    """Who holds the deploy lock now."""
    with ssh.connect(lock_host(inventory_name)) as conn:
        return LockState(*lock.status(conn))


def break_lock(inventory_name: str | None, *, force: bool, message: str | None) -> lock.LockInfo | None:
    """Break the deploy lock whoever holds it (needs `force`) and record who did it in the audit log;
    returns who held it (None: it was free, nothing recorded)."""
    if not force:
        raise RoadieError("breaking another operator's lock needs --force")
    with ssh.connect(lock_host(inventory_name)) as conn:
        started = time.monotonic()
        holder = lock.force_release(conn)
        if holder is not None:
            audit.record(conn, audit.event("unlock", result="forced", release=holder.release,
                                           duration_s=time.monotonic() - started, previous_owner=holder.owner,
                                           previous_operation=holder.operation, message=message or ""))
        return holder
