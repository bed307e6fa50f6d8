"""The deploy lock: who holds it, and breaking it (`lock.*`)."""

from __future__ import annotations

from invoke import Collection

from roadie.change import lock_ops
from roadie.core.cli import emit_json

from .common import INVENTORY_HELP, task


@task(help={"inventory": INVENTORY_HELP, "json": "Print JSON."})
def status(c, inventory_=None, json=False):
    """Show who holds the deploy lock, if anyone."""
    state = lock_ops.state(inventory_)
    if json:
        emit_json(state.as_dict())
    else:
        print(f"deploy lock: {state.describe()}")


@task(help={"inventory": INVENTORY_HELP, "force": "Required: break the lock whoever holds it.",
            "message": "Why: recorded in the audit log."})
def release(c, inventory_=None, force=False, message=None):
    """Break the deploy lock (needs --force); the audit log records who did it."""
    holder = lock_ops.break_lock(inventory_, force=force, message=message)
    print("deploy lock: was free; nothing to do" if holder is None else f"deploy lock: broken ({holder.describe()})")


ns = Collection("lock", status, release)
