"""The Redis cache: what is in it, and flushing it (`cache.*`)."""

from __future__ import annotations

from invoke import Collection

from roadie.cache import commands
from roadie.core.cli import Terminal, emit_json, human_bytes, table

from .common import INVENTORY_HELP, pick, task

CACHE_HELP = {"inventory": INVENTORY_HELP, "group": "Cache host or group (default cache).",
              "pattern": "Only keys matching this Redis glob (default: every key).", "json": "Print JSON.",
              "yes": "Do not ask for confirmation.", "message": "Why: recorded in the audit log."}


@task(help=pick(CACHE_HELP, "inventory", "group", "json"))
def info(c, inventory_=None, group="cache", json=False):
    """Redis on each cache host: role, memory, clients, keys, hit ratio, evictions."""
    states = commands.cache_states(inventory_, group)
    if json:
        emit_json([vars(s) for s in states])
        return
    print(table(["host", "role", "keys", "memory", "max", "clients", "hit ratio", "evicted"],
                [(s.host, s.role, s.keys, human_bytes(s.used_memory),
                  human_bytes(s.maxmemory) if s.maxmemory else "none", s.clients, s.hit_ratio, s.evicted)
                 for s in states]))


@task(help=pick(CACHE_HELP, "inventory", "group", "pattern", "yes", "message"))
def flush(c, inventory_=None, group="cache", pattern="*", yes=False, message=None):
    """Delete cached keys on the cache masters (says how many first); the service refills them on demand."""
    commands.flush_cache(inventory_, group, pattern, message=message, terminal=Terminal(yes))


ns = Collection("cache", info, flush)
