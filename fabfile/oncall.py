"""On-call: hosts, check, status, logs, disk, run and audit (no namespace)."""

from __future__ import annotations

from roadie.change import audit as audit_log
from roadie.core.cli import Terminal, emit_json, human_bytes, number, prefixed, table
from roadie.core.errors import RoadieError
from roadie.status import oncall
from roadie.status import report as status_report

from .common import COMMON_HELP, INVENTORY_HELP, task


@task(help=COMMON_HELP)
def hosts(c, inventory_=None, group="all", json=False):
    """List the inventory's hosts with their groups and SSH settings."""
    selected = oncall.hosts(inventory_, group)
    if json:
        emit_json([{"name": h.name, "address": h.address, "port": h.port, "user": h.user,
                    "groups": list(h.groups)} for h in selected])
        return
    print(table(["host", "address", "port", "user", "groups"],
                [(h.name, h.address, h.port, h.user, ",".join(h.groups)) for h in selected]))


@task(help=COMMON_HELP)
def check(c, inventory_=None, group="all", json=False):
    """Check hosts over SSH in parallel: reachable, host key verified, answers with its own name."""
    checked = oncall.check(inventory_, group)
    if json:
        emit_json([vars(r) for r in checked.rows])
    else:
        for r in checked.rows:
            print(prefixed(r.host, ("ok " if r.ok else "FAILED ") + r.detail))
    if checked.problem:
        raise RoadieError(checked.problem)


@task(help={**COMMON_HELP, "group": "Only this host or group (default all)."})
def status(c, inventory_=None, group="all", json=False):
    """Show the whole fleet at a glance and what needs attention; exit non-zero if anything does."""
    seen = oncall.fleet_status(inventory_, group, as_json=json)
    if json:
        emit_json(seen.report.as_dict())
    else:
        print(table(status_report.HEADERS, status_report.table_rows(seen.report.rows)))
        for problem in seen.report.problems:
            print(problem.line())
    if seen.problem:
        raise RoadieError(seen.problem)


@task(positional=["host"],
      help={"inventory": INVENTORY_HELP, "host": "The host.", "unit": "systemd unit (default: the host's service).",
            "follow": "Keep printing new lines (Ctrl-C to stop).", "grep": "Only lines matching this regex.",
            "since": "Start here: '1 hour ago', 'today', '2026-11-26 03:00'.", "lines": "Last N lines (default 100)."})
def logs(c, host, unit=None, inventory_=None, follow=False, grep=None, since=None, lines="100"):
    """A host's journal for one unit, host-prefixed; --follow streams it."""
    oncall.logs(inventory_, host, unit=unit, follow=follow, grep=grep, since=since, lines=lines)


@task(help={"inventory": INVENTORY_HELP, "group": "Host or group (default all).",
            "threshold": "Fail when a filesystem is fuller than this percentage (default 85).",
            "json": "Print JSON."})
def disk(c, inventory_=None, group="all", threshold="85", json=False):
    """Filesystem use on every host, in parallel; exits non-zero above --threshold or for unreachable hosts."""
    found = oncall.disks(inventory_, group, number(threshold, "--threshold", 0.01, 100, float))
    if json:
        emit_json({"filesystems": [vars(r) for r in found.rows], "errors": found.errors,
                   "threshold": found.threshold})
    else:
        print(table(["host", "mount", "size", "used", "avail", "use%", ""],
                    [(r.host, r.mount, human_bytes(r.total), human_bytes(r.used),
                      human_bytes(r.avail), r.pct, "OVER" if r in found.full else "") for r in found.rows]))
        for host, error in found.errors.items():
            print(prefixed(host, f"FAILED {error}"))
    if found.problem:
        raise RoadieError(found.problem)


@task(positional=["command"],
      help={"inventory": INVENTORY_HELP, "command": "The shell command, quoted.",
            "group": "Host or group to run it on (required).", "yes": "Do not ask for confirmation.",
            "timeout": "Seconds each host may take (default 120)."})
def run(c, command, group=None, inventory_=None, yes=False, timeout="120"):
    """Run one shell command on a group in parallel; host-prefixed output; non-zero if any host failed."""
    oncall.run(inventory_, group, command, timeout=timeout, terminal=Terminal(yes))


@task(help={"inventory": INVENTORY_HELP,
            "last": "How many records to show (default 20); the whole log is checked.",
            "json": "Print JSON."})
def audit(c, inventory_=None, last="20", json=False):
    """Check the fleet's audit log (hash chain, this machine's copy) and show its last records with SSH keys."""
    seen = oncall.review_audit(inventory_, number(last, "--last", 1, 100_000))   # checked before any host
    if json:
        emit_json(seen.records)
    else:
        print(table(audit_log.HEADERS, audit_log.table_rows(seen.records)))
    if seen.broken:
        raise RoadieError(seen.broken.describe(seen.host))
    if not json:
        print(f"{seen.host}: {seen.total} records, hash chain intact")


# Root-level tasks: fabfile/__init__.py adds them to the root collection.
TASKS = (hosts, check, status, logs, disk, run, audit)
