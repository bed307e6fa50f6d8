"""The database hosts as the inventory names them: one primary (database_primary), the replicas."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from roadie.core.errors import RoadieError
from roadie.core.inventory import Host, Inventory

# How progress is reported: deploy.types.Reporter, or any callable taking (text, host, event=...).
Report = Callable[..., None]


@dataclass(frozen=True)
class Topology:
    """The database hosts as the inventory names them."""

    primary: Host
    replicas: tuple[Host, ...]

    @property
    def hosts(self) -> list[Host]:
        return [self.primary, *self.replicas]


def topology(inv: Inventory) -> Topology:
    primaries = inv.groups.get("database_primary") or ()
    if len(primaries) != 1:
        raise RoadieError(f"inventory {inv.name} must have exactly one host in database_primary, "
                          f"has {len(primaries)}")
    replicas = tuple(inv.hosts[n] for n in inv.groups.get("database_replica") or ())
    return Topology(inv.hosts[primaries[0]], replicas)

