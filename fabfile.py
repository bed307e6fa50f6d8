"""Operations over SSH against an inventory's hosts. `fab --list` shows them; logic lives in roadie/."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from fabric import task
from invoke import Collection, Exit

from roadie import audit, deploy, fleet, inventory, lock, maintenance, ops, release, ssh, status
from roadie.balancer import Balancer
from roadie.cli import emit_json, friendly, human_bytes, number, prefixed, table
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
    "drain_timeout": "Most seconds to wait for a drained host's sessions to end before its restart cuts them "
                     "(default: the stream hosts' nginx audio timeout, the longest stream they serve).",
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
def deploy_(c, inventory_=None, release_=None, artifact=None, build=False, batch="1", canary=True, min_serving="1",
            drain_timeout=None, health_timeout="60", message=None, dry_run=False, yes=False, json=False):
    """Roll a release out to the stream hosts, batch by batch, behind HAProxy, with automatic rollback."""
    inv = inventory.load(inventory_)
    options = _options(batch, canary, min_serving, drain_timeout or deploy.default_drain_timeout(inv),
                       health_timeout, message)
    group = deploy.Fleet.from_inventory(inv)
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
def rollback(c, inventory_=None, to=None, batch="1", min_serving="1", drain_timeout=None, health_timeout="60",
             message=None, dry_run=False, yes=False, json=False):
    """Roll the stream hosts back to the previous (or a named) release, with the same gates."""
    inv = inventory.load(inventory_)
    options = _options(batch, False, min_serving, drain_timeout or deploy.default_drain_timeout(inv),
                       health_timeout, message)
    if to:
        release.check_release_id(to)
    group = deploy.Fleet.from_inventory(inv)
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


@task(auto_shortflags=False, help={"inventory": INVENTORY_HELP,
                                   "last": "How many records to show (default 20); the whole log is checked.",
                                   "json": "Print JSON."})
@friendly
def audit_(c, inventory_=None, last="20", json=False):
    """Check the fleet's audit log (hash chain, this machine's copy) and show its last records with SSH keys."""
    last = number(last, "--last", 1, 100_000)      # before any host is contacted
    with _lock_conn(inventory_) as conn:
        seen = audit.review(conn, last)
    if json:
        emit_json(seen.records)
    else:
        print(table(audit.HEADERS, audit.table_rows(seen.records)))
    if seen.broken:
        raise RoadieError(seen.broken.describe(seen.host))
    if not json:
        print(f"{seen.host}: {seen.total} records, hash chain intact")


@task(auto_shortflags=False, help={"inventory": INVENTORY_HELP})
@friendly
def seed(c, inventory_=None):
    """Load the demo catalogue and audio files (lab and staging only; needs a deployed release)."""
    inv = inventory.load(inventory_)
    if inv.name == "production":
        raise RoadieError("seed writes demo data; it never runs against production")
    fleet_ = deploy.Fleet.from_inventory(inv)
    with maintenance.Guarded(inv, "seed", hosts=[h.name for h in fleet_.stream]):
        deploy.seed_fleet(fleet_, deploy.Reporter())


# ---- on-call: status, drain, restart, maintenance, cache, logs, disk, run

def _reporter(json_: bool = False) -> deploy.Reporter:
    return deploy.Reporter(as_json=json_)


@task(auto_shortflags=False, help={**COMMON_HELP, "group": "Only this host or group (default all)."})
@friendly
def status_(c, inventory_=None, group="all", json=False):
    """Show the whole fleet at a glance and what needs attention; exit non-zero if anything does."""
    inv = inventory.load(inventory_)
    report = status.check(inv, group)
    if json:
        emit_json(report.as_dict())
    else:
        print(table(status.HEADERS, status.table_rows(report.rows)))
        for problem in report.problems:
            print(problem.line())
    bad = [r.host for r in report.rows if not r.healthy]
    said = [f"{len(bad)} of {len(report.rows)} hosts need attention: {', '.join(bad)}"] if bad else []
    if report.problems:
        critical = sum(p.severity == status.CRITICAL for p in report.problems)
        count = len(report.problems)
        said.append(f"{count} problem{'s' if count != 1 else ''}" + (f" ({critical} CRITICAL)" if critical else "")
                    + (" (in the JSON)" if json else " (above)"))
    if said:
        raise Exit("error: " + "; ".join(said), code=1)


from roadie import rotation  # noqa: E402 - this section's own import (fabfile sections are edited apart)


def _stream_balancer(inv, host_name: str):  # noqa: ANN001, ANN202
    if host_name not in inv.hosts:
        raise RoadieError(f"unknown host {host_name!r} in inventory {inv.name}")
    if host_name not in inv.groups.get("stream", ()):
        raise RoadieError(f"{host_name} is not a stream host; only stream hosts sit behind the balancer")
    return deploy.Fleet.from_inventory(inv).balancer


DRAIN_HELP = {"inventory": INVENTORY_HELP, "host": "The stream host.",
              "min_serving": "Refuse to leave fewer hosts than this in rotation (default 1).",
              "force": "Drain even below --min-serving.",
              "drain_timeout": "Seconds to wait for the host's sessions to end (default 60).",
              "message": "Why: recorded on the lock host with the drain (fab status shows it) and in the audit log."}


@task(auto_shortflags=False, help=DRAIN_HELP)
@friendly
def drain(c, host, inventory_=None, min_serving="1", force=False, drain_timeout="60", message=None):
    """Take a stream host out of rotation in HAProxy and wait for its sessions to end."""
    options = _options("1", False, min_serving, drain_timeout, 60, message)
    inv = inventory.load(inventory_)
    _stream_balancer(inv, host)
    with maintenance.Guarded(inv, "drain", hosts=[host], message=message or "") as change:
        drained = maintenance.drain(Balancer(change.conn), host, min_serving=options.min_serving, force=force,
                                    timeout=options.drain_timeout, report=_reporter())
        rotation.record(change.conn, host, lock.who(), message or "")   # out on purpose: status knows
        change.detail["sessions_left"] = 0 if drained else "some"
    if not drained:
        raise Exit(f"error: {host} is out of rotation but still has sessions after {drain_timeout} s", code=1)


@task(auto_shortflags=False, help={**{k: DRAIN_HELP[k] for k in ("inventory", "host")},
                                   "message": "Why: recorded in the audit log."})
@friendly
def undrain(c, host, inventory_=None, message=None):
    """Put a drained stream host back in rotation and wait until HAProxy reports it UP."""
    inv = inventory.load(inventory_)
    _stream_balancer(inv, host)
    with maintenance.Guarded(inv, "undrain", hosts=[host], message=message or "") as change:
        # Cleared first: if the host does not come back, it is no longer out on purpose and status says so.
        change.detail["was_drained_on_purpose"] = rotation.clear(change.conn, host)
        maintenance.undrain(Balancer(change.conn), host, timeout=60, report=_reporter())


@task(auto_shortflags=False, help={"inventory": INVENTORY_HELP, "group": "Host or group to restart (required).",
                                   "rolling": "Always on: hosts go one batch at a time (--no-rolling is refused).",
                                   "batch": DEPLOY_HELP["batch"], "min_serving": DEPLOY_HELP["min_serving"],
                                   "include_primary": "Also restart the PostgreSQL primary (writes pause while it "
                                                      "restarts); without it a plan that needs the primary is refused.",
                                   "message": DEPLOY_HELP["message"], "yes": DEPLOY_HELP["yes"]})
@friendly
def restart(c, group=None, inventory_=None, rolling=True, batch="1", min_serving="1", include_primary=False,
            message=None, yes=False):
    """Restart a group's service: stream hosts drain-aware in batches, others one at a time, health-checked."""
    if not group:
        raise RoadieError("name the hosts to restart with --group (a host or group)")
    if not rolling:
        raise RoadieError("restarting every host at once drops traffic; restarts are always rolling")
    inv = inventory.load(inventory_)
    hosts = inv.select(group)
    stream = set(inv.groups.get("stream", ()))
    stream_hosts = [h for h in hosts if h.name in stream]
    others = [h for h in hosts if h.name not in stream]
    for h in others:
        maintenance.service_for(h)   # an unknown service fails before the question
    options = _options(batch, False, min_serving, deploy.default_drain_timeout(inv), 60, message)
    fleet_ = deploy.Fleet.from_inventory(inv) if stream_hosts else None
    if stream_hosts:
        deploy.rollout.plan("restart", [h.name for h in stream_hosts], options.batch, False, options.min_serving)
    order = [h.name for h in maintenance.restart_order(inv, others)]
    primaries = [h for h in order if h in inv.groups.get("database_primary", ())]
    if primaries and not include_primary:
        raise RoadieError(f"this restart includes the PostgreSQL primary {', '.join(primaries)}, whose restart pauses "
                          "every write: pass --include-primary to go ahead (replicas restart first)")
    order = [f"{h} (PRIMARY: writes pause while it restarts)" if h in primaries else h for h in order]
    plan = ([f"stream hosts, drain-aware, {options.batch} at a time: {', '.join(h.name for h in stream_hosts)}"]
            if stream_hosts else []) + ([f"one at a time, replicas first, health-checked: {', '.join(order)}"]
                                        if order else [])
    for line in plan:
        print(f"restart: {line}")
    _confirm(f"restart {len(hosts)} hosts", yes)
    report = _reporter()
    with maintenance.Guarded(inv, "restart", hosts=[h.name for h in hosts], message=message or "") as change:
        if stream_hosts:
            maintenance.rolling_restart(fleet_, options, report, hosts=[h.name for h in stream_hosts], change=change)
        if others:
            maintenance.restart_one_by_one(inv, others, report)
    print(f"restart: {len(hosts)} hosts restarted and healthy")


MAINT_HELP = {"inventory": INVENTORY_HELP, "message": "Text of the page (and the audit line).",
              "retry_after": "Seconds clients are told to wait (Retry-After, default 600).",
              "yes": "Do not ask for confirmation."}


@task(auto_shortflags=False, help=MAINT_HELP)
@friendly
def maintenance_on(c, inventory_=None, message="We are upgrading the service.", retry_after="600", yes=False):
    """Serve the maintenance page (503 + Retry-After) from every balancer; stream hosts keep running."""
    retry_after = number(retry_after, "--retry-after", 1, 86400)
    inv = inventory.load(inventory_)
    balancers = inv.group("balancer")
    page = maintenance.render_page(message, retry_after)
    print(f"maintenance: every request to {', '.join(h.name for h in balancers)} will get 503 "
          f"(Retry-After {retry_after}) with the page from templates/maintenance.html.j2")
    _confirm("turn maintenance mode on", yes)
    with maintenance.Guarded(inv, "maintenance-on", hosts=[h.name for h in balancers], message=message):
        for host in balancers:
            with ssh.connect(host) as conn:
                how = maintenance.set_mode(conn, True, page, retry_after)
                print(prefixed(host.name, f"maintenance on (page {how})"))


@task(auto_shortflags=False, help={k: MAINT_HELP[k] for k in ("inventory", "yes")})
@friendly
def maintenance_off(c, inventory_=None, yes=False):
    """Stop serving the maintenance page: traffic goes to the stream hosts again."""
    inv = inventory.load(inventory_)
    balancers = inv.group("balancer")
    _confirm("turn maintenance mode off", yes)
    with maintenance.Guarded(inv, "maintenance-off", hosts=[h.name for h in balancers]):
        for host in balancers:
            with ssh.connect(host) as conn:
                maintenance.set_mode(conn, False)
                print(prefixed(host.name, "maintenance off"))


@task(auto_shortflags=False, help={"inventory": INVENTORY_HELP})
@friendly
def maintenance_status(c, inventory_=None):
    """Say whether each balancer serves the maintenance page now."""
    for host in inventory.load(inventory_).group("balancer"):
        with ssh.connect(host) as conn:
            print(prefixed(host.name, f"maintenance {maintenance.mode(conn)}"))


CACHE_HELP = {"inventory": INVENTORY_HELP, "group": "Cache host or group (default cache).",
              "pattern": "Only keys matching this Redis glob (default: every key).", "json": "Print JSON.",
              "yes": "Do not ask for confirmation.", "message": "Why: recorded in the audit log."}


@task(auto_shortflags=False, help={k: CACHE_HELP[k] for k in ("inventory", "group", "json")})
@friendly
def cache_info(c, inventory_=None, group="cache", json=False):
    """Redis on each cache host: role, memory, clients, keys, hit ratio, evictions."""
    inv = inventory.load(inventory_)
    states = ssh.parallel(lambda h: ops.cache(inv, h), inv.select(group))
    if json:
        emit_json([vars(s) for s in states])
        return
    print(table(["host", "role", "keys", "memory", "max", "clients", "hit ratio", "evicted"],
                [(s.host, s.role, s.keys, human_bytes(s.used_memory),
                  human_bytes(s.maxmemory) if s.maxmemory else "none", s.clients, s.hit_ratio, s.evicted)
                 for s in states]))


@task(auto_shortflags=False, help={k: CACHE_HELP[k] for k in ("inventory", "group", "pattern", "yes", "message")})
@friendly
def cache_flush(c, inventory_=None, group="cache", pattern="*", yes=False, message=None):
    """Delete cached keys on the cache masters (says how many first); the service refills them on demand."""
    pattern = ops.check_pattern(pattern)
    inv = inventory.load(inventory_)
    hosts = inv.select(group)
    counted = ssh.parallel(lambda h: ops.cache(inv, h, pattern), hosts)
    masters = [(h, s) for h, s in zip(hosts, counted, strict=True) if s.role == "master"]
    if not masters:
        raise RoadieError(f"no Redis master among {', '.join(h.name for h in hosts)}; nothing to flush")
    for h, s in masters:
        print(prefixed(h.name, f"will delete {s.matching} of {s.keys} keys matching {pattern!r}"))
    _confirm(f"flush {sum(s.matching or 0 for _, s in masters)} keys", yes)
    with maintenance.Guarded(inv, "cache-flush", hosts=[h.name for h, _ in masters], message=message or "") as change:
        for h, _ in masters:
            done = ops.cache(inv, h, pattern, flush=True)
            change.detail[f"flushed_{h.name}"] = done.flushed
            print(prefixed(h.name, f"deleted {done.flushed} keys; {done.keys_after} left"))


@task(auto_shortflags=False, positional=["host"],
      help={"inventory": INVENTORY_HELP, "host": "The host.", "unit": "systemd unit (default: the host's service).",
            "follow": "Keep printing new lines (Ctrl-C to stop).", "grep": "Only lines matching this regex.",
            "since": "Start here: '1 hour ago', 'today', '2026-11-26 03:00'.", "lines": "Last N lines (default 100)."})
@friendly
def logs(c, host, unit=None, inventory_=None, follow=False, grep=None, since=None, lines="100"):
    """A host's journal for one unit, host-prefixed; --follow streams it."""
    inv = inventory.load(inventory_)
    if host not in inv.hosts:
        raise RoadieError(f"unknown host {host!r} in inventory {inv.name}")
    target = inv.hosts[host]
    lines = number(lines, "--lines", 1, 100_000)
    command = ops.journal_command(unit or ops.default_unit(target), lines=lines, since=since, grep=grep,
                                  follow=follow)
    code = ops.logs(target, command, follow)
    if code:
        raise Exit(f"error: {host}: journalctl exited {code}", code=1)


@task(auto_shortflags=False, help={"inventory": INVENTORY_HELP, "group": "Host or group (default all).",
                                   "threshold": "Fail when a filesystem is fuller than this percentage (default 85).",
                                   "json": "Print JSON."})
@friendly
def disk(c, inventory_=None, group="all", threshold="85", json=False):
    """Filesystem use on every host, in parallel; exits non-zero above --threshold or for unreachable hosts."""
    threshold = number(threshold, "--threshold", 0.01, 100, float)
    rows, errors = ops.disks(inventory.load(inventory_).select(group))
    full = [r for r in rows if r.pct > threshold]
    if json:
        emit_json({"filesystems": [vars(r) for r in rows], "errors": errors, "threshold": threshold})
    else:
        print(table(["host", "mount", "size", "used", "avail", "use%", ""],
                    [(r.host, r.mount, human_bytes(r.total), human_bytes(r.used),
                      human_bytes(r.avail), r.pct, "OVER" if r in full else "") for r in rows]))
        for host, error in errors.items():
            print(prefixed(host, f"FAILED {error}"))
    problems = [f"{r.host}:{r.mount} {r.pct}%" for r in full] + [f"{h} unreachable" for h in errors]
    if problems:
        raise Exit(f"error: over {threshold:g}% or unreachable: {', '.join(problems)}", code=1)


@task(auto_shortflags=False, positional=["command"],
      help={"inventory": INVENTORY_HELP, "command": "The shell command, quoted.",
            "group": "Host or group to run it on (required).", "yes": "Do not ask for confirmation.",
            "timeout": "Seconds each host may take (default 120)."})
@friendly
def run(c, command, group=None, inventory_=None, yes=False, timeout="120"):
    """Run one shell command on a group in parallel; host-prefixed output; non-zero if any host failed."""
    if not command.strip():
        raise RoadieError("the command is empty")
    timeout = number(timeout, "--timeout", 1, 86400)
    if not group:
        raise RoadieError("name the hosts with --group (a host, a group, or a comma-separated list)")
    inv = inventory.load(inventory_)
    hosts = inv.select(group)
    print(f"run: {command!r} on {len(hosts)} hosts: {', '.join(h.name for h in hosts)}")
    _confirm(f"run it on {len(hosts)} hosts", yes)
    # No deploy lock (on-call may need to look while a deploy runs), but the record goes to the fleet's log.
    with maintenance.Guarded(inv, "run", hosts=[h.name for h in hosts], lock=False) as change:
        change.detail["command"] = command
        results = ssh.run_parallel(hosts, command, timeout=timeout)
        for name, r in results.items():
            out = (r.stdout + r.stderr).rstrip("\n")
            if out:
                print(prefixed(name, out))
            if not r.ok:
                print(prefixed(name, f"FAILED {r.error or f'exit {r.exit_code}'}"))
        failed = [n for n, r in results.items() if not r.ok]
        change.detail.update(failed=failed, exit={n: r.exit_code for n, r in results.items()},
                             errors={n: r.error[:300] for n, r in results.items() if r.error})
        change.result = "failed" if failed else "ok"
    if failed:
        raise Exit(f"error: {len(failed)} of {len(results)} hosts failed: {', '.join(failed)}", code=1)



# ---- database: db.*
from roadie import database as db_ops  # noqa: E402 - this section's own import (fabfile sections are edited apart)

DB_HELP = {"inventory": INVENTORY_HELP, "json": "Print JSON."}


def _age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"


@task(auto_shortflags=False, help={"inventory": INVENTORY_HELP, "message": DEPLOY_HELP["message"],
                                   "yes": DEPLOY_HELP["yes"]})
@friendly
def db_backup(c, inventory_=None, message=None, yes=False):
    """Take a base backup on the primary now (the scheduled one's script), with its size and duration."""
    inv = inventory.load(inventory_)
    primary = db_ops.topology(inv).primary
    print(f"db.backup: base backup on {primary.name} with {db_ops.BACKUP_SERVICE} (records the key tables' "
          "reference; retention may remove the oldest backup)")
    _confirm(f"take a base backup on {primary.name}", yes)
    with maintenance.Guarded(inv, "db.backup", hosts=[primary.name], message=message or "") as change:
        result = db_ops.backup(inv, deploy.Reporter())
        change.detail = {"backup": result.backup.name, "size_bytes": result.backup.size_bytes}
    print(prefixed(primary.name, f"backup {result.backup.name}: {human_bytes(result.backup.size_bytes)} "
                                 f"({result.backup.size_bytes} bytes) in {result.duration_s:.1f} s"))


@task(auto_shortflags=False, help=DB_HELP)
@friendly
def db_backups(c, inventory_=None, json=False):
    """List the primary's base backups with their ages and sizes."""
    inv = inventory.load(inventory_)
    primary = db_ops.topology(inv).primary
    conn = ssh.connect(primary)
    try:
        backups = db_ops.list_backups(conn)
    finally:
        conn.close()
    if json:
        emit_json([b.as_dict() for b in backups])
        return
    print(table(["backup", "age", "size", "finished", "first WAL", "reference"],
                [(b.name, _age(b.age_s), human_bytes(b.size_bytes), b.finished_at, b.start_wal,
                  "yes" if b.has_reference else "no") for b in reversed(backups)]))
    if not backups:
        print(f"{primary.name}: no base backups")


@task(auto_shortflags=False, help={**DB_HELP, "backup": "Backup name (default: the newest).",
                                   "on": "Host to restore on (default: the first replica)."})
@friendly
def db_restore_check(c, inventory_=None, backup=None, on=None, json=False):
    """Restore a backup on a replica (or --on HOST) and compare key tables with the primary at backup time."""
    inv = inventory.load(inventory_)
    db_ops.restore_target(inv, backup, on)   # bad input fails here, before any host
    report = deploy.Reporter(stream=sys.stderr if json else None)
    started = time.monotonic()
    try:
        check = db_ops.restore_check(inv, report, backup, on)
    except RoadieError as exc:
        _db_audit(inv, "db.restore-check", "failed", error=str(exc), duration_s=time.monotonic() - started)
        raise RoadieError(f"RESTORE CHECK FAILED: {exc}") from None
    _db_audit(inv, "db.restore-check", "ok" if check.ok else "failed", backup=check.backup, restored_on=check.host,
              restore_s=check.restore_s, problems=check.problems, duration_s=check.duration_s)
    if json:
        emit_json(check.as_dict())
    else:
        for name, got in sorted(check.tables.items()):
            want = check.reference.get(name, {})
            same = "ok" if got == want else "MISMATCH"
            print(prefixed(check.host, f"{name}: {got['rows']} rows, checksum {got['checksum']} "
                                       f"(recorded {want.get('rows')}, {want.get('checksum')}) {same}"))
        print(prefixed(check.host, f"backup {check.backup}: restored in {check.restore_s:.0f} s "
                                   f"(copy {human_bytes(check.copy_bytes)} in {check.copy_s:.1f} s, "
                                   f"total {check.duration_s:.1f} s)"))
    if not check.ok:
        raise RoadieError(f"RESTORE CHECK FAILED: backup {check.backup} on {check.host}: {check.problems[0]}")


def _db_audit(inv, action: str, result: str, duration_s: float, **detail) -> None:  # noqa: ANN001, ANN003
    conn = ssh.connect(deploy.Fleet.from_inventory(inv).balancer)
    try:
        audit.record(conn, audit.event(action, result=result, duration_s=duration_s, **detail))
    finally:
        conn.close()


@task(auto_shortflags=False, help=DB_HELP)
@friendly
def db_replication(c, inventory_=None, json=False):
    """Show each database host's role, WAL positions, lag and replication slots."""
    states = db_ops.replication(inventory.load(inventory_))
    if json:
        emit_json([s.as_dict() for s in states])
    else:
        print(table(["host", "role", "current/received", "sent", "replay", "lag bytes", "lag s", "state"],
                    [(s.host, s.role, s.current_lsn or "-", s.sent_lsn or "-", s.replay_lsn or "-",
                      "-" if s.lag_bytes is None else s.lag_bytes, "-" if s.lag_s is None else s.lag_s,
                      s.state or s.error or "-") for s in states]))
        slots = [(s.host, sl["slot"], "active" if sl["active"] else "INACTIVE", sl["restart_lsn"] or "-",
                  "-" if sl["retained_bytes"] is None else human_bytes(sl["retained_bytes"]), sl["wal_status"] or "-")
                 for s in states for sl in s.slots]
        if slots:
            print()
            print(table(["host", "slot", "state", "restart_lsn", "retained WAL", "wal_status"], slots))
    down = [s.host for s in states if not s.reachable]
    if down:
        raise RoadieError(f"{len(down)} database host(s) unreachable: {', '.join(down)}")


@task(auto_shortflags=False, help={
    "inventory": INVENTORY_HELP, "yes": "Required: promote without asking (there is no dry run of a failover).",
    "force": "Go on when the lag is above --max-lag or unreadable, or the old primary is unreachable.",
    "max_lag": f"Refuse above this replication lag in bytes (default {db_ops.DEFAULT_MAX_LAG}).",
    "to": "Replica to promote (default: the first of database_replica).",
    "batch": DEPLOY_HELP["batch"], "min_serving": DEPLOY_HELP["min_serving"], "message": DEPLOY_HELP["message"]})
@friendly
def db_failover(c, inventory_=None, yes=False, force=False, max_lag=None, to=None, batch="1",
                min_serving="1", message=None):
    """Promote the replica, fence the old primary, repoint and restart the stream hosts (needs --yes)."""
    options = _options(batch, False, min_serving, 60, 60, message)
    max_lag = db_ops.check_max_lag(db_ops.DEFAULT_MAX_LAG if max_lag is None else max_lag)  # before any host
    inv = inventory.load(inventory_)
    plan = db_ops.plan_failover(inv, max_lag, force, to)
    deploy.rollout.plan("restart", plan.stream_hosts, options.batch, False, options.min_serving)
    for line in plan.describe():
        print(line)
    _confirm(f"promote {plan.new_primary} and fence {plan.old_primary}", yes)
    result = db_ops.failover(inv, plan, deploy.Reporter(), options)
    print(f"failover: done in {result.duration_s:.1f} s "
          + ", ".join(f"{k} {v}" for k, v in result.timings.items()))
    for note in result.notes:
        print(f"WARNING: {note}")
    for line in db_ops.inventory_change(plan, inv.name):
        print(line)


db_ns = Collection("db")
db_ns.add_task(db_backup, "backup")
db_ns.add_task(db_backups, "backups")
db_ns.add_task(db_restore_check, "restore-check")
db_ns.add_task(db_replication, "replication")
db_ns.add_task(db_failover, "failover")


lock_ns = Collection("lock")
lock_ns.add_task(lock_status, "status")
lock_ns.add_task(lock_release, "release")

maintenance_ns = Collection("maintenance")
maintenance_ns.add_task(maintenance_on, "on")
maintenance_ns.add_task(maintenance_off, "off")
maintenance_ns.add_task(maintenance_status, "status")

cache_ns = Collection("cache")
cache_ns.add_task(cache_info, "info")
cache_ns.add_task(cache_flush, "flush")

ns = Collection(hosts, check, rollback, releases, seed, drain, undrain, restart, logs, disk, run)
ns.add_task(deploy_, "deploy")
ns.add_task(audit_, "audit")
ns.add_task(status_, "status")
ns.add_collection(lock_ns)
ns.add_collection(db_ns)
ns.add_collection(maintenance_ns)
ns.add_collection(cache_ns)
