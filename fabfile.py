"""Operations over SSH against an inventory's hosts. `fab --list` shows them; logic lives in roadie/."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from fabric import task
from invoke import Collection, Exit

from roadie import audit, deploy, fleet, inventory, lock, release, ssh
from roadie.cli import emit_json, friendly, prefixed, table
from roadie.errors import RoadieError
from roadie.paths import ROOT

RELEASES_DIR = ROOT / "build" / "releases"

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


def _confirm(what: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise RoadieError(f"{what}: pass --yes to confirm (no terminal to ask on)")
    answer = input(f"{what}? type 'yes' to go on: ").strip()
    if answer != "yes":
        raise RoadieError("not confirmed; nothing changed")


def _artifact(release_id: str | None, artifact: str | None, build: bool) -> tuple[Path, release.Manifest]:
    chosen = sum(bool(x) for x in (release_id, artifact, build))
    if chosen > 1:
        raise RoadieError("give one of --release, --artifact or --build")
    if artifact:
        path = Path(artifact)
    elif release_id:
        path = RELEASES_DIR / f"{release.check_release_id(release_id)}.tar.gz"
        if not path.is_file():
            known = ", ".join(sorted(p.name.removesuffix(".tar.gz") for p in RELEASES_DIR.glob("*.tar.gz")))
            raise RoadieError(f"unknown release {release_id!r} (built: {known or 'none'}; use --build)")
    else:
        path = release.build(RELEASES_DIR).path
    return path, release.verify(path)


DEPLOY_HELP = {
    "inventory": INVENTORY_HELP,
    "release": "Release id built earlier (build/releases/<id>.tar.gz).",
    "artifact": "Path of a release artifact to deploy.",
    "build": "Build a release from the working tree first (the default when no release is given).",
    "batch": "Hosts per batch: a count or a percentage like 25% (default 1).",
    "canary": "Deploy one host alone first (default on; --no-canary to skip).",
    "min_serving": "Refuse a plan that leaves fewer hosts than this in rotation (default 1).",
    "drain_timeout": "Seconds to wait for a drained host's sessions to end (default 60).",
    "health_timeout": "Seconds a host has to pass its health gate (default 60).",
    "message": "Why: recorded in the lock and the audit log.",
    "dry_run": "Print the plan; change nothing.",
    "yes": "Do not ask for confirmation.",
    "json": "Machine-readable events, one JSON object per line.",
}


def _options(batch, canary, min_serving, drain_timeout, health_timeout, message) -> deploy.Options:  # noqa: ANN001
    try:
        return deploy.Options(batch=str(batch), canary=canary, min_serving=int(min_serving),
                              drain_timeout=float(drain_timeout), health_timeout=float(health_timeout),
                              message=message or "")
    except ValueError as exc:
        raise RoadieError(f"bad number: {exc}") from None


@task(auto_shortflags=False, help=DEPLOY_HELP)
@friendly
def deploy_(c, inventory_=None, release_=None, artifact=None, build=False, batch="1", canary=True, min_serving=1,
            drain_timeout=60, health_timeout=60, message=None, dry_run=False, yes=False, json=False):
    """Roll a release out to the stream hosts, batch by batch, behind HAProxy, with automatic rollback."""
    options = _options(batch, canary, min_serving, drain_timeout, health_timeout, message)
    group = deploy.Fleet.from_inventory(inventory.load(inventory_))
    path, manifest = _artifact(release_, artifact, build)
    report = deploy.Reporter(as_json=json)
    if not dry_run:
        deploy.rollout.plan(manifest.release_id, [h.name for h in group.stream], options.batch, options.canary,
                            options.min_serving)  # a bad plan fails before the question
        _confirm(f"deploy {manifest.release_id} to {len(group.stream)} stream hosts", yes)
    deploy.deploy(group, path, manifest, options, report, dry_run=dry_run)


@task(auto_shortflags=False, help={**{k: DEPLOY_HELP[k] for k in ("inventory", "batch", "min_serving",
                                                                    "drain_timeout", "health_timeout", "message",
                                                                    "dry_run", "yes", "json")},
                                   "to": "Release id to go back to (default: each host's previous release)."})
@friendly
def rollback(c, inventory_=None, to=None, batch="1", min_serving=1, drain_timeout=60, health_timeout=60,
             message=None, dry_run=False, yes=False, json=False):
    """Roll the stream hosts back to the previous (or a named) release, with the same gates."""
    options = _options(batch, False, min_serving, drain_timeout, health_timeout, message)
    if to:
        release.check_release_id(to)
    group = deploy.Fleet.from_inventory(inventory.load(inventory_))
    if not dry_run:
        _confirm(f"roll back the stream hosts to {to or 'their previous release'}", yes)
    deploy.rollback(group, options, deploy.Reporter(as_json=json), to=to, dry_run=dry_run)


@task(auto_shortflags=False, help={"inventory": INVENTORY_HELP, "json": "Print JSON."})
@friendly
def releases(c, inventory_=None, json=False):
    """Show each stream host's current, previous and kept releases."""
    states = deploy.host_releases(deploy.Fleet.from_inventory(inventory.load(inventory_)))
    if json:
        emit_json([s.as_dict() for s in states])
        return
    print(table(["host", "current", "previous", "kept"],
                [(s.host, s.current or "-", s.previous or "-", " ".join(s.kept) or "-") for s in states]))


def _lock_conn(inventory_):  # noqa: ANN001, ANN202
    return ssh.connect(deploy.Fleet.from_inventory(inventory.load(inventory_)).balancer)


@task(auto_shortflags=False, help={"inventory": INVENTORY_HELP, "json": "Print JSON."})
@friendly
def lock_status(c, inventory_=None, json=False):
    """Show who holds the deploy lock, if anyone."""
    conn = _lock_conn(inventory_)
    holder, now = lock.status(conn)
    if json:
        emit_json(None if holder is None else {**vars(holder), "token": None})
    else:
        print("deploy lock: free" if holder is None else f"deploy lock: {holder.describe(now)}")


@task(auto_shortflags=False, help={"inventory": INVENTORY_HELP, "force": "Required: break the lock whoever holds it.",
                                   "message": "Why: recorded in the audit log."})
@friendly
def lock_release(c, inventory_=None, force=False, message=None):
    """Break the deploy lock (needs --force); the audit log records who did it."""
    if not force:
        raise RoadieError("breaking another operator's lock needs --force")
    conn = _lock_conn(inventory_)
    started = time.monotonic()
    holder = lock.force_release(conn)
    if holder is None:
        print("deploy lock: was free; nothing to do")
        return
    audit.record(conn, audit.event("unlock", result="forced", release=holder.release,
                                   duration_s=time.monotonic() - started, previous_owner=holder.owner,
                                   previous_operation=holder.operation, message=message or ""))
    print(f"deploy lock: broken ({holder.describe()})")


@task(auto_shortflags=False, help={"inventory": INVENTORY_HELP, "last": "How many entries (default 20).",
                                   "json": "Print JSON."})
@friendly
def audit_(c, inventory_=None, last=20, json=False):
    """Show the shared audit log: deploys, rollbacks, failovers, forced unlocks."""
    entries = audit.read(_lock_conn(inventory_), int(last))
    if json:
        emit_json(entries)
        return
    print(table(["when", "who", "action", "release", "result", "s", "detail"],
                [(e.get("ts", ""), e.get("who", ""), e.get("action", ""), e.get("release", ""), e.get("result", ""),
                  e.get("duration_s", ""), e.get("error") or e.get("message") or "") for e in entries]))


@task(auto_shortflags=False, help={"inventory": INVENTORY_HELP})
@friendly
def seed(c, inventory_=None):
    """Load the demo catalogue and audio files (lab and staging only; needs a deployed release)."""
    inv = inventory.load(inventory_)
    if inv.name == "production":
        raise RoadieError("seed writes demo data; it never runs against production")
    deploy.seed_fleet(deploy.Fleet.from_inventory(inv), deploy.Reporter())


lock_ns = Collection("lock")
lock_ns.add_task(lock_status, "status")
lock_ns.add_task(lock_release, "release")

ns = Collection(hosts, check, rollback, releases, seed)
ns.add_task(deploy_, "deploy")
ns.add_task(audit_, "audit")
ns.add_collection(lock_ns)
