"""Fleet-wide checks over SSH: is every host reachable, verified, and who it should be."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from roadie.core import ssh
from roadie.core.inventory import Inventory


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
