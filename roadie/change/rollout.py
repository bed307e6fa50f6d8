"""Plan rolling deploys: batches, canary first, and a capacity guard.

The plan is pure data, printed before anything changes and refused when a step would leave
fewer than `min_serving` hosts in rotation.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from roadie.core.errors import RoadieError

_BATCH = re.compile(r"(?P<n>[0-9]+)(?P<pct>%?)")


@dataclass(frozen=True)
class Batch:
    """Hosts taken out of rotation together, and how many keep serving meanwhile."""

    number: int
    hosts: tuple[str, ...]
    serving: int
    canary: bool = False


@dataclass(frozen=True)
class Plan:
    """An ordered rollout of one release over a set of hosts."""

    release: str
    hosts: tuple[str, ...]
    batches: tuple[Batch, ...] = field(default_factory=tuple)
    min_serving: int = 1
    action: str = ""   # what each batch gets, when it is not a release (e.g. "restart")

    def describe(self) -> list[str]:
        """The plan as the lines an operator reads before saying yes."""
        what = f"{self.action} of" if self.action else f"release {self.release} to"
        lines = [f"{what} {len(self.hosts)} hosts in {len(self.batches)} batches "
                 f"(at least {self.min_serving} serving at every step)"]
        for batch in self.batches:
            tag = " (canary)" if batch.canary else ""
            lines.append(f"  batch {batch.number}{tag}: {', '.join(batch.hosts)}  -> {batch.serving} serving")
        return lines


def batch_size(spec: str | int, total: int) -> int:
    """Hosts per batch from `N` or `P%` (rounded down, at least 1)."""
    match = _BATCH.fullmatch(str(spec).strip())
    if not match:
        raise RoadieError(f"--batch must be a host count or a percentage like 25%, got {spec!r}")
    n = int(match["n"])
    if match["pct"]:
        if not 0 < n <= 100:
            raise RoadieError(f"--batch percentage must be 1%..100%, got {spec!r}")
        return max(1, math.floor(total * n / 100))
    if n < 1:
        raise RoadieError(f"--batch must be at least 1, got {spec!r}")
    return min(n, total)


def plan(release: str, hosts: list[str] | tuple[str, ...], batch: str | int = 1, canary: bool = True,
         min_serving: int = 1, action: str = "") -> Plan:
    """Split hosts into batches, canary alone first; refuse a plan below `min_serving`."""
    hosts = tuple(hosts)
    if not hosts:
        raise RoadieError("no hosts to deploy to")
    if len(set(hosts)) != len(hosts):
        raise RoadieError("a host is listed twice")
    if not isinstance(min_serving, int) or min_serving < 0:
        raise RoadieError(f"--min-serving must be a whole number >= 0, got {min_serving!r}")
    if min_serving > len(hosts) - 1 and len(hosts) > 0:
        # Deploying means taking at least one host out; min_serving must leave room for that.
        raise RoadieError(f"--min-serving {min_serving} is impossible with {len(hosts)} hosts: "
                          f"at most {len(hosts) - 1} can serve while one is updated")
    size = batch_size(batch, len(hosts))
    allowed = len(hosts) - min_serving
    if size > allowed:
        raise RoadieError(f"batches of {size} would leave {len(hosts) - size} of {len(hosts)} hosts serving, "
                          f"below --min-serving {min_serving}")
    groups: list[tuple[str, ...]] = []
    rest = list(hosts)
    if canary and len(hosts) > 1:
        groups.append((rest.pop(0),))
    while rest:
        groups.append(tuple(rest[:size]))
        rest = rest[size:]
    batches = tuple(
        Batch(number=i + 1, hosts=g, serving=len(hosts) - len(g), canary=canary and i == 0 and len(hosts) > 1)
        for i, g in enumerate(groups)
    )
    return Plan(release=release, hosts=hosts, batches=batches, min_serving=min_serving, action=action)
