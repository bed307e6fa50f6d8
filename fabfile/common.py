"""What every namespace shares: the task decorator and the help texts used by more than one task."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import fabric

from roadie.core.cli import friendly

INVENTORY_HELP = "Inventory: lab, staging, production or a path (default: $ANSIBLE_INVENTORY, else lab)."

COMMON_HELP = {"inventory": INVENTORY_HELP, "group": "Only this host or group.", "json": "Print JSON."}

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


def pick(helps: dict[str, str], *names: str) -> dict[str, str]:
    """Some of a help dict's entries, for a task that takes only those flags."""
    return {name: helps[name] for name in names}


def task(**options: Any) -> Callable[[Callable], fabric.Task]:
    """fabric.task with this package's settings: long flags only, and the body wrapped in
    roadie.core.cli.friendly, the one place a RoadieError becomes one `error: ...` line and exit status 1
    (130 after Ctrl-C)."""

    def decorate(body: Callable) -> fabric.Task:
        return fabric.task(auto_shortflags=False, **options)(friendly(body))

    return decorate
