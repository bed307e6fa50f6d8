"""What fab's cache tasks do: every cache host's Redis at a glance, and flushing keys on the masters."""

from __future__ import annotations

from roadie.cache import client
from roadie.cache.client import CacheState
from roadie.core import inventory, ssh
from roadie.core.cli import Terminal
from roadie.core.errors import RoadieError
from roadie.core.inventory import Host
from roadie.deploy import maintenance


def check_pattern(pattern: str) -> str:
    if not pattern or len(pattern) > 200 or any(c.isspace() for c in pattern):
        raise RoadieError(f"bad --pattern {pattern!r}: a Redis glob without spaces, at most 200 characters")
    return pattern


def cache_states(inventory_name: str | None, group: str) -> list[CacheState]:
    """`fab cache.info`: every selected cache host's Redis, in parallel."""
    inv = inventory.load(inventory_name)
    return ssh.parallel(lambda h: client.cache(inv, h), inv.select(group))


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
    found = masters(hosts, ssh.parallel(lambda h: client.cache(inv, h, pattern), hosts))
    for h, s in found:
        terminal.say(f"will delete {s.matching} of {s.keys} keys matching {pattern!r}", h.name)
    terminal.confirm(f"flush {sum(s.matching or 0 for _, s in found)} keys")
    with maintenance.Guarded(inv, "cache-flush", hosts=[h.name for h, _ in found], message=message or "") as change:
        for h, _ in found:
            done = client.cache(inv, h, pattern, flush=True)
            change.detail[f"flushed_{h.name}"] = done.flushed
            terminal.say(f"deleted {done.flushed} keys; {done.keys_after} left", h.name)
