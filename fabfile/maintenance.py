"""Maintenance mode: the balancers serve a 503 page instead of the stream hosts (`maintenance.*`)."""

from __future__ import annotations

from invoke import Collection

from roadie.core.cli import Terminal, number, prefixed
from roadie.deploy import maintenance

from .common import INVENTORY_HELP, pick, task

MAINT_HELP = {"inventory": INVENTORY_HELP, "message": "Text of the page (and the audit line).",
              "retry_after": "Seconds clients are told to wait (Retry-After, default 600).",
              "yes": "Do not ask for confirmation."}


@task(help=MAINT_HELP)
def on(c, inventory_=None, message="We are upgrading the service.", retry_after="600", yes=False):
    """Serve the maintenance page (503 + Retry-After) from every balancer; stream hosts keep running."""
    maintenance.turn_on(inventory_, message, number(retry_after, "--retry-after", 1, 86400), Terminal(yes))


@task(help=pick(MAINT_HELP, "inventory", "yes"))
def off(c, inventory_=None, yes=False):
    """Stop serving the maintenance page: traffic goes to the stream hosts again."""
    maintenance.turn_off(inventory_, Terminal(yes))


@task(help={"inventory": INVENTORY_HELP})
def status(c, inventory_=None):
    """Say whether each balancer serves the maintenance page now."""
    for host, mode in maintenance.modes(inventory_):
        print(prefixed(host, f"maintenance {mode}"))


ns = Collection("maintenance", on, off, status)
