"""Operations over SSH against an inventory's hosts. `fab --list` shows them; logic lives in roadie/."""

from __future__ import annotations

from fabric import task
from invoke import Collection, Exit

from roadie import fleet, inventory
from roadie.cli import emit_json, friendly, prefixed, table

INVENTORY_HELP = "Inventory: lab, staging, production or a path (default: $ANSIBLE_INVENTORY, else lab)."


COMMON_HELP = {"inventory": INVENTORY_HELP, "group": "Only this host or group.", "json": "Print JSON."}


@task(auto_shortflags=False, help=COMMON_HELP)
@friendly
def hosts(c, inventory_=None, group="all", json=False):
    """List the inventory's hosts with their groups and SSH settings."""
    inv = inventory.load(inventory_)
    selected = inv.select(group)
    if json:
        emit_json([{"name": h.name, "address": h.address, "port": h.port, "user": h.user,
                    "groups": list(h.groups)} for h in selected])
        return
    print(table(["host", "address", "port", "user", "groups"],
                [(h.name, h.address, h.port, h.user, ",".join(h.groups)) for h in selected]))


COMMON_HELP = {"inventory": INVENTORY_HELP, "group": "Only this host or group.", "json": "Print JSON."}


@task(auto_shortflags=False, help=COMMON_HELP)
@friendly
def check(c, inventory_=None, group="all", json=False):
    """Check hosts over SSH in parallel: reachable, host key verified, answers with its own name."""
    rows = fleet.check(inventory.load(inventory_), group)
    if json:
        emit_json([vars(r) for r in rows])
    else:
        for r in rows:
            print(prefixed(r.host, ("ok " if r.ok else "FAILED ") + r.detail))
    failed = [r.host for r in rows if not r.ok]
    if failed:
        raise Exit(f"error: {len(failed)} of {len(rows)} hosts failed: {', '.join(failed)}", code=1)


ns = Collection(hosts, check)
