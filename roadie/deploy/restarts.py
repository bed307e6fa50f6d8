"""`fab restart`: which hosts restart how, checked and shown before anything restarts, then run.

Stream hosts restart drain-aware in batches (maintenance.rolling_restart); every other host restarts its
group's service one at a time, replicas before the PostgreSQL primary, each health-checked before the
next (maintenance.restart_one_by_one). The primary's restart pauses every write: it needs its own flag.
"""

from __future__ import annotations

from dataclasses import dataclass

from roadie.change import rollout
from roadie.core import inventory
from roadie.core.cli import Terminal
from roadie.core.errors import RoadieError
from roadie.core.fleet import Fleet
from roadie.core.inventory import Host, Inventory
from roadie.deploy import maintenance
from roadie.deploy.stream_fleet import options
from roadie.deploy.types import Options, Reporter, default_drain_timeout


@dataclass
class RestartPlan:
    """The hosts of one `fab restart`, split by how they restart."""

    hosts: list[Host]                 # every host named, in the inventory's order
    stream: list[Host]                # drain-aware, in batches
    others: list[Host]                # one at a time
    order: list[str]                  # the others in restart order: replicas first, the primary last
    primaries: list[str]              # PostgreSQL primaries among the others
    options: Options
    fleet: Fleet | None        # the stream fleet behind its balancer, when stream hosts restart

    def describe(self) -> list[str]:
        """The plan as the operator reads it before the question."""
        order = [f"{h} (PRIMARY: writes pause while it restarts)" if h in self.primaries else h for h in self.order]
        lines = []
        if self.stream:
            lines.append(f"stream hosts, drain-aware, {self.options.batch} at a time: "
                         f"{', '.join(h.name for h in self.stream)}")
        if order:
            lines.append(f"one at a time, replicas first, health-checked: {', '.join(order)}")
        return lines


def plan(inv: Inventory, group: str, *, batch: str, min_serving: str, include_primary: bool,
         message: str | None) -> RestartPlan:
    """What restarting `group` does, checked against the inventory; touches no host."""
    hosts = inv.select(group)
    stream = set(inv.groups.get("stream", ()))
    stream_hosts = [h for h in hosts if h.name in stream]
    others = [h for h in hosts if h.name not in stream]
    for h in others:
        maintenance.service_for(h)   # an unknown service fails before the question
    opts = options(batch, False, min_serving, default_drain_timeout(inv), 60, message)
    fleet = Fleet.from_inventory(inv) if stream_hosts else None
    if stream_hosts:
        rollout.plan("restart", [h.name for h in stream_hosts], opts.batch, False, opts.min_serving)
    order = [h.name for h in maintenance.restart_order(inv, others)]
    primaries = [h for h in order if h in inv.groups.get("database_primary", ())]
    if primaries and not include_primary:
        raise RoadieError(f"this restart includes the PostgreSQL primary {', '.join(primaries)}, whose restart pauses "
                          "every write: pass --include-primary to go ahead (replicas restart first)")
    return RestartPlan(hosts, stream_hosts, others, order, primaries, opts, fleet)


def restart(inventory_name: str | None, group: str | None, *, rolling: bool, batch: str, min_serving: str,
            include_primary: bool, message: str | None, terminal: Terminal) -> RestartPlan:
    """Plan, show, ask, then restart inside the change pipeline; the plan it carried out."""
    if not group:
        raise RoadieError("name the hosts to restart with --group (a host or group)")
    if not rolling:
        raise RoadieError("restarting every host at once drops traffic; restarts are always rolling")
    inv = inventory.load(inventory_name)
    work = plan(inv, group, batch=batch, min_serving=min_serving, include_primary=include_primary, message=message)
    for line in work.describe():
        terminal.say(f"restart: {line}")
    terminal.confirm(f"restart {len(work.hosts)} hosts")
    report = Reporter()
    with maintenance.Guarded(inv, "restart", hosts=[h.name for h in work.hosts], message=message or "") as change:
        if work.stream:
            maintenance.rolling_restart(work.fleet, work.options, report, hosts=[h.name for h in work.stream],
                                        change=change)
        if work.others:
            maintenance.restart_one_by_one(inv, work.others, report)
    return work
