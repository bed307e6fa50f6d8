"""The fleet as Roadie operates it, and the fleet check.

`Fleet` is the stream hosts and the balancer in front of them, read from the inventory once: deploys,
rollbacks, restarts, drains, `fab status` and the on-call tasks all take it. The balancer is the first
host of its group; it also keeps the deploy lock and the fleet's audit log (the lock host).

`lease_ttl` is the inventory's `roadie_lease_ttl` (read once by roadie/core/inventory.py's `load`): how long
the lease every change holds on the lock host lives without a renewal.

`check` is the fleet check (`fab check`, `inv lab.check`): every host reachable over SSH, its key
verified, answering with its own name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from roadie.core import ssh
from roadie.core.inventory import DEFAULT_LEASE_TTL, Host, Inventory


@dataclass
class Fleet:
    """The stream hosts and their balancer (None only in a fleet read with `partial`)."""

    stream: list[Host]
    balancer: Host | None
    lease_ttl: int = DEFAULT_LEASE_TTL

    @classmethod
    def from_inventory(cls, inv: Inventory, group: str = "stream", *, partial: bool = False) -> Fleet:
        """The inventory's fleet; an inventory without the stream group or a balancer fails, unless
        `partial` (`fab status` reports whatever there is): then a missing group reads as none."""
        if partial:
            balancers = inv.groups.get("balancer") or ()
            balancer = inv.hosts[balancers[0]] if balancers else None
            return cls(stream=[inv.hosts[name] for name in inv.groups.get(group, ())], balancer=balancer,
                       lease_ttl=inv.lease_ttl)
        stream = inv.group(group)
        balancer = inv.group("balancer")[0]
        return cls(stream=stream, balancer=balancer, lease_ttl=inv.lease_ttl)


@dataclass
class CheckRow:
    """One host's answer to the fleet check."""

    host: str
    address: str
    ok: bool
    detail: str


def check(inv: Inventory, pattern: str = "all", user: str | None = None) -> list[CheckRow]:
    """Run `hostname` on every selected host in parallel; a host must answer with its own name.

    `user` logs in as another account than the inventory's operations user (the lab's bootstrap root
    before provisioning has created the deploy user).
    """
    hosts = [dataclasses.replace(h, user=user) if user else h for h in inv.select(pattern)]
    results = ssh.run_parallel(hosts, "hostname")
    rows = []
    for host in hosts:
        result = results[host.name]
        answered = result.stdout.strip()
        if not result.ok:
            rows.append(CheckRow(host.name, host.address, False, result.error or f"exit {result.exit_code}"))
        elif answered.split(".")[0] != host.name.split(".")[0]:
            rows.append(CheckRow(host.name, host.address, False, f"answered as {answered!r}"))
        else:
            rows.append(CheckRow(host.name, host.address, True, f"hostname {answered}"))
    return rows
