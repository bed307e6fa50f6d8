"""Deploys and the stream fleet: deploy, rollback, releases, seed, drain, undrain, restart (no namespace)."""

from __future__ import annotations

from roadie.core.cli import Terminal, emit_json, table
from roadie.deploy import restarts, stream_fleet

from .common import DEPLOY_HELP, INVENTORY_HELP, pick, task

DRAIN_HELP = {"inventory": INVENTORY_HELP, "host": "The stream host.",
              "min_serving": "Refuse to leave fewer hosts than this in rotation (default 1).",
              "force": "Drain even below --min-serving.",
              "drain_timeout": "Seconds to wait for the host's sessions to end (default 60).",
              "message": "Why: recorded on the lock host with the drain (fab status shows it) and in the audit log."}


@task(help=DEPLOY_HELP)
def deploy(c, inventory_=None, release_=None, artifact=None, build=False, batch="1", canary=True, min_serving="1",
           drain_timeout=None, health_timeout="60", message=None, dry_run=False, yes=False, json=False):
    """Roll a release out to the stream hosts, batch by batch, behind HAProxy, with automatic rollback."""
    stream_fleet.deploy_release(inventory_, release_id=release_, artifact=artifact, build=build, batch=batch,
                                canary=canary, min_serving=min_serving, drain_timeout=drain_timeout,
                                health_timeout=health_timeout, message=message, dry_run=dry_run, as_json=json,
                                terminal=Terminal(yes))


@task(help={**pick(DEPLOY_HELP, "inventory", "batch", "min_serving", "drain_timeout", "health_timeout", "message",
                   "dry_run", "yes", "json"),
            "to": "Release id to go back to (default: each host's previous release)."})
def rollback(c, inventory_=None, to=None, batch="1", min_serving="1", drain_timeout=None, health_timeout="60",
             message=None, dry_run=False, yes=False, json=False):
    """Roll the stream hosts back to the previous (or a named) release, with the same gates."""
    stream_fleet.rollback(inventory_, to=to, batch=batch, min_serving=min_serving, drain_timeout=drain_timeout,
                          health_timeout=health_timeout, message=message, dry_run=dry_run, as_json=json,
                          terminal=Terminal(yes))


@task(help={"inventory": INVENTORY_HELP, "json": "Print JSON."})
def releases(c, inventory_=None, json=False):
    """Show each stream host's current, previous and kept releases."""
    states = stream_fleet.releases(inventory_)
    if json:
        emit_json([s.as_dict() for s in states])
        return
    print(table(["host", "current", "previous", "kept"],
                [(s.host, s.current or "-", s.previous or "-", " ".join(s.kept) or "-") for s in states]))


@task(help={"inventory": INVENTORY_HELP})
def seed(c, inventory_=None):
    """Load the demo catalogue and audio files (lab and staging only; needs a deployed release)."""
    stream_fleet.seed(inventory_)


@task(help=DRAIN_HELP)
def drain(c, host, inventory_=None, min_serving="1", force=False, drain_timeout="60", message=None):
    """Take a stream host out of rotation in HAProxy and wait for its sessions to end."""
    stream_fleet.drain(inventory_, host, min_serving=min_serving, force=force, drain_timeout=drain_timeout,
                       message=message)


@task(help={**pick(DRAIN_HELP, "inventory", "host"), "message": "Why: recorded in the audit log."})
def undrain(c, host, inventory_=None, message=None):
    """Put a drained stream host back in rotation and wait until HAProxy reports it UP."""
    stream_fleet.undrain(inventory_, host, message=message)


@task(help={"inventory": INVENTORY_HELP, "group": "Host or group to restart (required).",
            "rolling": "Always on: hosts go one batch at a time (--no-rolling is refused).",
            "batch": DEPLOY_HELP["batch"], "min_serving": DEPLOY_HELP["min_serving"],
            "include_primary": "Also restart the PostgreSQL primary (writes pause while it "
                               "restarts); without it a plan that needs the primary is refused.",
            "message": DEPLOY_HELP["message"], "yes": DEPLOY_HELP["yes"]})
def restart(c, group=None, inventory_=None, rolling=True, batch="1", min_serving="1", include_primary=False,
            message=None, yes=False):
    """Restart a group's service: stream hosts drain-aware in batches, others one at a time, health-checked."""
    done = restarts.restart(inventory_, group, rolling=rolling, batch=batch, min_serving=min_serving,
                            include_primary=include_primary, message=message, terminal=Terminal(yes))
    print(f"restart: {len(done.hosts)} hosts restarted and healthy")


# Root-level tasks: fabfile/__init__.py adds them to the root collection.
TASKS = (deploy, rollback, releases, seed, drain, undrain, restart)
