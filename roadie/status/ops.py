"""Everyday on-call commands over SSH: logs and disks (the cache: roadie/cache/)."""

from __future__ import annotations

import io
import json
import re
import shlex
import sys
from dataclasses import dataclass

from roadie import remote
from roadie.core import ssh
from roadie.core.errors import RoadieError
from roadie.core.inventory import Host
from roadie.status import probe

_UNIT = re.compile(r"[A-Za-z0-9@_.:-]+")
_SINCE = re.compile(r"[A-Za-z0-9 :+_.-]{1,40}")


# ------------------------------------------------------------------ logs
def default_unit(host: Host) -> str:
    for group in ("stream", "database", "cache", "balancer"):
        if group in host.groups:
            return probe.UNITS[group][0]
    raise RoadieError(f"{host.name}: no default unit for groups {', '.join(host.groups) or 'none'}; name one")


def journal_command(unit: str, *, lines: int, since: str | None, grep: str | None, follow: bool) -> str:
    """journalctl for one unit; every value checked here so the host never sees a malformed one."""
    if not _UNIT.fullmatch(unit):
        raise RoadieError(f"bad unit name {unit!r}")
    if not 0 < lines <= 100_000:
        raise RoadieError(f"--lines must be 1..100000, got {lines}")
    argv = ["journalctl", "--no-pager", "--output=short-iso", "-u", unit, "-n", str(lines)]
    if since:
        if not _SINCE.fullmatch(since):
            raise RoadieError(f"bad --since {since!r}: use e.g. '1 hour ago', '2026-11-26 03:00' or 'today'")
        argv += ["--since", since]
    if grep:
        try:
            re.compile(grep)
        except re.error as exc:
            raise RoadieError(f"bad --grep regular expression {grep!r}: {exc}") from None
        argv += ["--grep", grep]
    if follow:
        argv.append("--follow")
    return " ".join(shlex.quote(a) for a in argv)


def logs(host: Host, command: str, follow: bool) -> int:
    """Stream a host's journal to stdout, each line prefixed with the host; returns journalctl's status."""
    class Prefixer(io.TextIOBase):
        def __init__(self) -> None:
            self.partial = ""

        def write(self, text: str) -> int:
            self.partial += text
            *done, self.partial = self.partial.split("\n")
            for line in done:
                sys.stdout.write(f"{host.name}: {line}\n")
            sys.stdout.flush()
            return len(text)

    out = Prefixer()
    with ssh.connect(host) as conn:
        result = conn.run(command, warn=True, in_stream=False, out_stream=out, err_stream=sys.stderr,
                          timeout=None if follow else 120)
    if out.partial:
        sys.stdout.write(f"{host.name}: {out.partial}\n")
    # journalctl --grep exits 1 when nothing matched: that is an answer, not a failure.
    return 0 if result.exited in (0, 1) else result.exited


# ------------------------------------------------------------------ disk
DISK_PROGRAM = "disk_usage.py"   # roadie/remote/: every real filesystem's size and use


@dataclass
class DiskRow:
    host: str
    mount: str
    total: int
    used: int
    avail: int
    pct: float


def disks(hosts: list[Host]) -> tuple[list[DiskRow], dict[str, str]]:
    """Every host's real filesystems, in parallel; failures by host."""
    results = ssh.run_parallel(hosts, remote.command(DISK_PROGRAM), timeout=60)
    rows: list[DiskRow] = []
    errors: dict[str, str] = {}
    for name, r in results.items():
        if not r.ok:
            errors[name] = r.error or (r.stderr.strip().splitlines() or [f"exit {r.exit_code}"])[-1]
            continue
        rows += [DiskRow(host=name, **entry) for entry in json.loads(r.stdout.strip().splitlines()[-1])]
    return rows, errors
