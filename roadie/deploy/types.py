"""What a rollout is told and what it tells: its Options, its Reporter and its Outcome.

Deploys, rollbacks and rolling restarts (deploy.py, maintenance.py) take Options and a Reporter (host-prefixed
progress lines, or one JSON event per line for CI) and return an Outcome; the executor (executor.py) fills it
in batch by batch.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field

from roadie.core import contract
from roadie.core.inventory import Inventory

DEFAULT_KEEP = 5


def default_drain_timeout(inv: Inventory, group: str = "stream") -> float:
    """The longest response nginx lets a stream host send (the inventory's audio timeout, else the role's):
    a deploy waits that long for the longest stream the platform serves before it restarts a host."""
    hosts = inv.groups.get(group) or ()
    if hosts:
        try:
            return float(contract.host_value(inv, hosts[0], "STREAM_AUDIO_TIMEOUT"))
        except (TypeError, ValueError):
            pass
    return float(contract.STREAM_AUDIO_TIMEOUT)


class Reporter:
    """Host-prefixed progress lines, or one JSON event per line for CI (`--json`)."""

    def __init__(self, as_json: bool = False, stream=None) -> None:
        self.as_json = as_json
        self.stream = stream or sys.stdout

    def __call__(self, message: str, host: str | None = None, **data: object) -> None:
        if self.as_json:
            record = {"ts": round(time.time(), 3), "event": data.pop("event", "info"), "message": message}
            if host:
                record["host"] = host
            record.update(data)
            self.stream.write(json.dumps(record, sort_keys=True) + "\n")
        else:
            self.stream.write(f"{host or 'deploy'}: {message}\n")
        self.stream.flush()


@dataclass
class Options:
    """How a rollout runs; the defaults suit a small fleet behind one HAProxy."""

    batch: str = "1"
    canary: bool = True
    min_serving: int = 1
    drain_timeout: float = 600.0     # default_drain_timeout(inventory) when the operator names none
    health_timeout: float = 60.0
    health_passes: int = 3
    health_interval: float = 0.5
    keep: int = DEFAULT_KEEP
    backend: str = contract.STREAM_BACKEND
    message: str = ""


@dataclass
class Outcome:
    """What a deploy or rollback did."""

    release: str
    ok: bool
    done_hosts: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
    error: str = ""
    duration_s: float = 0.0
    timings: list[dict] = field(default_factory=list)
    cut_sessions: dict[str, int] = field(default_factory=dict)   # host -> sessions a drain limit cut
    left_out: dict[str, str] = field(default_factory=dict)       # host -> why it was not in the plan
