"""What `fab deploy`, `rollback`, `releases`, `seed`, `drain` and `undrain` do with their flags.

Each function checks its input before it contacts a host, asks (`Terminal.confirm`) before it changes
anything, and hands the work to roadie.deploy.deploy and roadie.deploy.maintenance inside the one change pipeline.
"""

from __future__ import annotations

from roadie.change import lock, rollout, rotation
from roadie.core import inventory
from roadie.core.cli import Terminal
from roadie.core.errors import RoadieError
from roadie.core.fleet import Fleet
from roadie.core.inventory import Host, Inventory
from roadie.deploy import artifacts, deploy, maintenance, release, stream_host
from roadie.deploy.balancer import Balancer
from roadie.deploy.types import Options, Outcome, Reporter, default_drain_timeout


def options(batch: str | int, canary: bool, min_serving: str | int, drain_timeout: str | float,
            health_timeout: str | float, message: str | None) -> Options:
    """Options from the command line's strings; a value that is no number is a RoadieError."""
    try:
        return Options(batch=str(batch), canary=canary, min_serving=int(min_serving),
                              drain_timeout=float(drain_timeout), health_timeout=float(health_timeout),
                              message=message or "")
    except ValueError as exc:
        raise RoadieError(f"bad number: {exc}") from None


def deploy_release(inventory_name: str | None, *, release_id: str | None, artifact: str | None, build: bool,
                   batch: str, canary: bool, min_serving: str, drain_timeout: str | None, health_timeout: str,
                   message: str | None, dry_run: bool, as_json: bool, terminal: Terminal) -> Outcome:
    """Resolve the artifact, check the plan, ask, then roll the release out (deploy.deploy)."""
    inv = inventory.load(inventory_name)
    opts = options(batch, canary, min_serving, drain_timeout or default_drain_timeout(inv), health_timeout,
                   message)
    fleet = Fleet.from_inventory(inv)
    path, manifest = artifacts.resolve(release_id, artifact, build)
    report = Reporter(as_json=as_json)
    if not dry_run:
        rollout.plan(manifest.release_id, [h.name for h in fleet.stream], opts.batch, opts.canary,
                     opts.min_serving)  # a bad plan fails before the question
        terminal.confirm(f"deploy {manifest.release_id} to {len(fleet.stream)} stream hosts")
    return deploy.deploy(fleet, path, manifest, opts, report, dry_run=dry_run)


def rollback(inventory_name: str | None, *, to: str | None, batch: str, min_serving: str,
             drain_timeout: str | None, health_timeout: str, message: str | None, dry_run: bool, as_json: bool,
             terminal: Terminal) -> Outcome:
    """Check the target release id, ask, then roll back (deploy.rollback)."""
    inv = inventory.load(inventory_name)
    opts = options(batch, False, min_serving, drain_timeout or default_drain_timeout(inv), health_timeout,
                   message)
    if to:
        release.check_release_id(to)
    fleet = Fleet.from_inventory(inv)
    if not dry_run:
        terminal.confirm(f"roll back the stream hosts to {to or 'their previous release'}")
    return deploy.rollback(fleet, opts, Reporter(as_json=as_json), to=to, dry_run=dry_run)


def releases(inventory_name: str | None) -> list[stream_host.Releases]:
    """Each stream host's current, previous and kept releases."""
    return deploy.host_releases(Fleet.from_inventory(inventory.load(inventory_name)))


def seed(inventory_name: str | None) -> None:
    """Demo catalogue and audio on the stream hosts, under the lock; never against production."""
    inv = inventory.load(inventory_name)
    if inv.name == "production":
        raise RoadieError("seed writes demo data; it never runs against production")
    fleet = Fleet.from_inventory(inv)
    with maintenance.Guarded(inv, "seed", hosts=[h.name for h in fleet.stream]):
        deploy.seed_fleet(fleet, Reporter())


def stream_balancer(inv: Inventory, host: str) -> Host:
    """The balancer in front of stream host `host`; a RoadieError when `host` is no stream host."""
    if host not in inv.hosts:
        raise RoadieError(f"unknown host {host!r} in inventory {inv.name}")
    if host not in inv.groups.get("stream", ()):
        raise RoadieError(f"{host} is not a stream host; only stream hosts sit behind the balancer")
    return Fleet.from_inventory(inv).balancer


def drain(inventory_name: str | None, host: str, *, min_serving: str, force: bool, drain_timeout: str,
          message: str | None) -> None:
    """Take a stream host out of rotation on purpose (status shows who and why) and wait for its sessions.
    A RoadieError when sessions outlive the timeout: the host stays out of rotation."""
    opts = options("1", False, min_serving, drain_timeout, 60, message)
    inv = inventory.load(inventory_name)
    stream_balancer(inv, host)
    with maintenance.Guarded(inv, "drain", hosts=[host], message=message or "") as change:
        drained = maintenance.drain(Balancer(change.conn), host, min_serving=opts.min_serving, force=force,
                                    timeout=opts.drain_timeout, report=Reporter())
        rotation.record(change.conn, host, lock.who(), message or "")   # out on purpose: status knows
        change.detail["sessions_left"] = 0 if drained else "some"
    if not drained:
        raise RoadieError(f"{host} is out of rotation but still has sessions after {drain_timeout} s")


def undrain(inventory_name: str | None, host: str, *, message: str | None) -> None:
    """Put a drained stream host back in rotation and wait until HAProxy reports it UP."""
    inv = inventory.load(inventory_name)
    stream_balancer(inv, host)
    with maintenance.Guarded(inv, "undrain", hosts=[host], message=message or "") as change:
        # Cleared first: if the host does not come back, it is no longer out on purpose and status says so.
        change.detail["was_drained_on_purpose"] = rotation.clear(change.conn, host)
        maintenance.undrain(Balancer(change.conn), host, timeout=60, report=Reporter())
