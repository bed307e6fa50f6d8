"""What fab's on-call tasks do with their flags: hosts, check, status, logs, disk, run and audit.

The reporting commands return what they found and, in `problem`, the one line that makes the command
exit non-zero (empty when all is well): the task prints the findings first, then fails with that line.
"""

from __future__ import annotations

from dataclasses import dataclass

from roadie.change import audit, lock_ops
from roadie.core import fleet, inventory, ssh
from roadie.core.cli import Terminal, number
from roadie.core.errors import RoadieError
from roadie.core.inventory import Host
from roadie.deploy import maintenance
from roadie.status import ops
from roadie.status import report as status_report


def hosts(inventory_name: str | None, group: str) -> list[Host]:
    """The inventory's hosts named by a host or group."""
    return inventory.load(inventory_name).select(group)


@dataclass
class Checked:
    """`fab check`: one row per host, and the line to fail with when any host failed."""

    rows: list[fleet.CheckRow]
    problem: str


def check(inventory_name: str | None, group: str) -> Checked:
    """Reach every selected host over SSH in parallel, host key verified."""
    rows = fleet.check(inventory.load(inventory_name), group)
    failed = [r.host for r in rows if not r.ok]
    return Checked(rows, f"{len(failed)} of {len(rows)} hosts failed: {', '.join(failed)}" if failed else "")


@dataclass
class FleetStatus:
    """`fab status`: the fleet's report, and the line to fail with when anything needs attention."""

    report: status_report.Report
    problem: str


def attention_line(report: status_report.Report, as_json: bool) -> str:
    """One line naming the unhealthy hosts and counting the problems; empty when there is nothing."""
    bad = [r.host for r in report.rows if not r.healthy]
    said = [f"{len(bad)} of {len(report.rows)} hosts need attention: {', '.join(bad)}"] if bad else []
    if report.problems:
        critical = sum(p.severity == status_report.CRITICAL for p in report.problems)
        count = len(report.problems)
        said.append(f"{count} problem{'s' if count != 1 else ''}" + (f" ({critical} CRITICAL)" if critical else "")
                    + (" (in the JSON)" if as_json else " (above)"))
    return "; ".join(said)


def fleet_status(inventory_name: str | None, group: str, as_json: bool) -> FleetStatus:
    """Every selected host's row and what needs attention across the fleet."""
    report = status_report.check(inventory.load(inventory_name), group)
    return FleetStatus(report, attention_line(report, as_json))


def logs(inventory_name: str | None, host: str, *, unit: str | None, follow: bool, grep: str | None,
         since: str | None, lines: str | int) -> None:
    """Print one unit's journal from a host, host-prefixed; a RoadieError when journalctl fails."""
    inv = inventory.load(inventory_name)
    if host not in inv.hosts:
        raise RoadieError(f"unknown host {host!r} in inventory {inv.name}")
    target = inv.hosts[host]
    count = number(lines, "--lines", 1, 100_000)
    command = ops.journal_command(unit or ops.default_unit(target), lines=count, since=since, grep=grep,
                                  follow=follow)
    code = ops.logs(target, command, follow)
    if code:
        raise RoadieError(f"{host}: journalctl exited {code}")


@dataclass
class Disks:
    """`fab disk`: every filesystem, the hosts that did not answer, those above the threshold."""

    rows: list[ops.DiskRow]
    errors: dict[str, str]
    full: list[ops.DiskRow]
    threshold: float

    @property
    def problem(self) -> str:
        problems = [f"{r.host}:{r.mount} {r.pct}%" for r in self.full] + [f"{h} unreachable" for h in self.errors]
        return f"over {self.threshold:g}% or unreachable: {', '.join(problems)}" if problems else ""


def disks(inventory_name: str | None, group: str, threshold: float) -> Disks:
    """Filesystem use on every selected host, in parallel, measured against `threshold` percent."""
    rows, errors = ops.disks(inventory.load(inventory_name).select(group))
    return Disks(rows, errors, [r for r in rows if r.pct > threshold], threshold)


def run(inventory_name: str | None, group: str | None, command: str, *, timeout: str | int,
        terminal: Terminal) -> None:
    """Run one shell command on a group in parallel, recorded on the fleet; host-prefixed output as each
    answer is shown; a RoadieError naming the hosts that failed."""
    if not command.strip():
        raise RoadieError("the command is empty")
    seconds = number(timeout, "--timeout", 1, 86400)
    if not group:
        raise RoadieError("name the hosts with --group (a host, a group, or a comma-separated list)")
    inv = inventory.load(inventory_name)
    chosen = inv.select(group)
    terminal.say(f"run: {command!r} on {len(chosen)} hosts: {', '.join(h.name for h in chosen)}")
    terminal.confirm(f"run it on {len(chosen)} hosts")
    # No deploy lock (on-call may need to look while a deploy runs), but the record goes to the fleet's log.
    with maintenance.Guarded(inv, "run", hosts=[h.name for h in chosen], lock=False) as change:
        change.detail["command"] = command
        results = ssh.run_parallel(chosen, command, timeout=seconds)
        for name, r in results.items():
            out = (r.stdout + r.stderr).rstrip("\n")
            if out:
                terminal.say(out, name)
            if not r.ok:
                terminal.say(f"FAILED {r.error or f'exit {r.exit_code}'}", name)
        failed = [n for n, r in results.items() if not r.ok]
        change.detail.update(failed=failed, exit={n: r.exit_code for n, r in results.items()},
                             errors={n: r.error[:300] for n, r in results.items() if r.error})
        change.result = "failed" if failed else "ok"
    if failed:
        raise RoadieError(f"{len(failed)} of {len(results)} hosts failed: {', '.join(failed)}")


def review_audit(inventory_name: str | None, last: int) -> audit.Review:
    """The fleet's audit log checked whole (hash chain, this machine's copy), with its last `last` records."""
    with ssh.connect(lock_ops.lock_host(inventory_name)) as conn:
        return audit.review(conn, last)
