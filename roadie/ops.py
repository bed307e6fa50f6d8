"""Everyday on-call commands over SSH: the cache, logs, disks and an ad-hoc command on a group."""

from __future__ import annotations

import io
import json
import re
import shlex
import sys
from dataclasses import dataclass

from roadie import contract, inventory, maintenance, remote, ssh, status
from roadie.cli import Terminal
from roadie.errors import RoadieError
from roadie.inventory import Host, Inventory

_UNIT = re.compile(r"[A-Za-z0-9@_.:-]+")
_SINCE = re.compile(r"[A-Za-z0-9 :+_.-]{1,40}")


# ------------------------------------------------------------------ cache (Redis)
REDIS_PROGRAM = "redis_cache.py"   # roadie/remote/: INFO, key counts and flushes on a cache host


@dataclass
class CacheState:
    host: str
    role: str
    used_memory: int
    maxmemory: int
    clients: int
    hits: int
    misses: int
    evicted: int
    keys: int
    matching: int | None = None
    flushed: int | None = None
    keys_after: int | None = None

    @property
    def hit_ratio(self) -> str:
        total = self.hits + self.misses
        return f"{100 * self.hits / total:.1f}%" if total else "-"


def check_pattern(pattern: str) -> str:
    if not pattern or len(pattern) > 200 or any(c.isspace() for c in pattern):
        raise RoadieError(f"bad --pattern {pattern!r}: a Redis glob without spaces, at most 200 characters")
    return pattern


def cache(inv: Inventory, host: Host, pattern: str | None = None, flush: bool = False) -> CacheState:
    """INFO, key counts and (with flush) the flush itself on one cache host."""
    secret = inv.host_var(host.name, status.REDIS_PASSWORD_VAR)
    args = {"user": contract.host_value(inv, host.name, "REDIS_ADMIN_USER"),
            "port": int(contract.host_value(inv, host.name, "REDIS_PORT")),
            "pattern": pattern, "flush": flush}
    with ssh.connect(host) as conn:
        result = conn.run(remote.command(REDIS_PROGRAM, json.dumps(args)), hide=True, warn=True,
                          in_stream=io.StringIO(secret + "\n"), timeout=300)
    if result.exited != 0:
        raise RoadieError(f"{host.name}: {(result.stderr.strip().splitlines() or ['redis probe failed'])[-1]}")
    return CacheState(host=host.name, **json.loads(result.stdout.strip().splitlines()[-1]))


def cache_states(inventory_name: str | None, group: str) -> list[CacheState]:
    """`fab cache.info`: every selected cache host's Redis, in parallel."""
    inv = inventory.load(inventory_name)
    return ssh.parallel(lambda h: cache(inv, h), inv.select(group))


def masters(hosts: list[Host], states: list[CacheState]) -> list[tuple[Host, CacheState]]:
    """The hosts whose Redis is a master (replicas refuse a flush), with their states; none is a RoadieError."""
    found = [(h, s) for h, s in zip(hosts, states, strict=True) if s.role == "master"]
    if not found:
        raise RoadieError(f"no Redis master among {', '.join(h.name for h in hosts)}; nothing to flush")
    return found


def flush_cache(inventory_name: str | None, group: str, pattern: str, *, message: str | None,
                terminal: Terminal) -> None:
    """`fab cache.flush`: count the matching keys on each master, say how many will go, ask, then delete
    them inside the change pipeline, host by host."""
    pattern = check_pattern(pattern)
    inv = inventory.load(inventory_name)
    hosts = inv.select(group)
    found = masters(hosts, ssh.parallel(lambda h: cache(inv, h, pattern), hosts))
    for h, s in found:
        terminal.say(f"will delete {s.matching} of {s.keys} keys matching {pattern!r}", h.name)
    terminal.confirm(f"flush {sum(s.matching or 0 for _, s in found)} keys")
    with maintenance.Guarded(inv, "cache-flush", hosts=[h.name for h, _ in found], message=message or "") as change:
        for h, _ in found:
            done = cache(inv, h, pattern, flush=True)
            change.detail[f"flushed_{h.name}"] = done.flushed
            terminal.say(f"deleted {done.flushed} keys; {done.keys_after} left", h.name)


# ------------------------------------------------------------------ logs
def default_unit(host: Host) -> str:
    for group in ("stream", "database", "cache", "balancer"):
        if group in host.groups:
            return status.UNITS[group][0]
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
