"""On-call changes to the running fleet: drain and undrain, rolling restarts, maintenance mode.

Everything here goes through the same pieces as `fab deploy`: the HAProxy runtime API (balancer.py),
the rollout planner and its capacity guard (rollout.py), the batch runner with its health gate and
rollback (executor.Rollout), the deploy lock and the audit log. Callers take the lock; these functions
assume it is held, but for turn_on and turn_off (`fab maintenance.on/off`), which take it themselves.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from roadie.cache import client as redis_client
from roadie.change import rollout, rotation
from roadie.change.pipeline import Change, lock_host
from roadie.core import contract, inventory, ssh
from roadie.core.cli import Terminal
from roadie.core.errors import RoadieError
from roadie.core.fleet import Fleet
from roadie.core.inventory import Host, Inventory
from roadie.core.paths import ROOT
from roadie.db import client as pg_client
from roadie.deploy import deploy
from roadie.deploy.balancer import Balancer
from roadie.deploy.executor import Rollout
from roadie.deploy.types import Options, Outcome, Reporter

TEMPLATES = ROOT / "templates"


# ------------------------------------------------------------------ drain / undrain
def serving_without(balancer: Balancer, hosts: list[str]) -> int:
    """How many servers of the backend would still take traffic with `hosts` out."""
    return sum(1 for name, s in balancer.servers().items() if s.in_rotation and name not in hosts)


def drain(balancer: Balancer, host: str, *, min_serving: int, force: bool, timeout: float,
          report: Reporter) -> bool:
    """Take a stream host out of rotation and wait for its sessions; False if sessions outlived `timeout`."""
    state = balancer.server(host)
    left = serving_without(balancer, [host])
    if left < min_serving and not force:
        raise RoadieError(f"draining {host} would leave {left} stream hosts in rotation, below --min-serving "
                          f"{min_serving}; nothing changed (--force to drain anyway)")
    if state.status.startswith(("DRAIN", "MAINT")):
        report(f"already out of rotation ({state.status})", host, event="drain")
    seen = balancer.drain(host)
    report(f"draining; {left} hosts keep serving", host, event="drain")
    drained, state = balancer.wait_drained(host, timeout, seen=seen)
    if drained:
        report("drained: no sessions left", host, event="drained")
    else:
        report(f"still {state.sessions} sessions after {timeout:.0f} s", host, event="drain_timeout")
    return drained


def undrain(balancer: Balancer, host: str, *, timeout: float, report: Reporter) -> None:
    """Put a host back in rotation and wait until health checks report it UP."""
    seen = balancer.enable(host)
    state = balancer.wait_up(host, timeout, seen=seen)
    report(f"back in rotation ({state.status})", host, event="enabled")


# ------------------------------------------------------------------ restarts
def rolling_restart(fleet: Fleet, options: Options, report: Reporter,
                    hosts: list[str] | None = None, change: Change | None = None) -> Outcome:
    """Restart stream hosts batch by batch: drain, restart, health gate on their release, enable, UP.

    Runs inside `change` (the caller's Guarded): its lease is checked before each step and a first
    Ctrl-C stops after the batch in hand. Hosts drained on purpose are left out (and stay out of
    rotation); hosts a lost command left out come first.
    """
    work = Rollout(fleet, options, report, change)
    work.connect()
    outcome = Outcome(release="", ok=False)
    started = time.monotonic()
    try:
        assert work.balancer is not None and work.lb_conn is not None
        order, outcome.left_out = deploy.plan_order(fleet, work.servers_seen, rotation.on_purpose(work.lb_conn), report)
        if hosts:
            order = [h for h in order if h in hosts]
        plan = rollout.plan("restart", order, options.batch, canary=False, min_serving=options.min_serving,
                            action="restart")
        for line in plan.describe():
            report(line.strip(), event="plan")
        work.run(plan, outcome, restart_only=True)
        outcome.ok = True
    finally:
        outcome.duration_s = time.monotonic() - started
        work.close()
    return outcome


@dataclass(frozen=True)
class Service:
    """The unit a group runs and how to tell it is healthy again after a restart."""

    unit: str
    check: Callable[[ssh.HostConnection, Inventory], tuple[bool, str]]


def _check_haproxy(conn: ssh.HostConnection, inv: Inventory) -> tuple[bool, str]:
    try:
        servers = Balancer(conn).servers()
    except RoadieError as exc:
        return False, str(exc)
    up = sum(1 for s in servers.values() if s.in_rotation)
    return up > 0, f"runtime API answers; {up} of {len(servers)} stream servers UP"


GROUP_SERVICES = {
    "balancer": Service("haproxy.service", _check_haproxy),
    "database": Service(contract.PG_UNIT, pg_client.serving),
    "cache": Service(contract.REDIS_UNIT, redis_client.ping),
}


def restart_order(inv: Inventory, hosts: list[Host]) -> list[Host]:
    """Replicas before the primary, so the primary's restart comes last and is the only write pause."""
    primaries = set(inv.groups.get("database_primary", ()))
    return sorted(hosts, key=lambda h: h.name in primaries)


def service_for(host: Host) -> Service:
    for group in host.groups:
        if group in GROUP_SERVICES:
            return GROUP_SERVICES[group]
    raise RoadieError(f"{host.name} is in no group with a known service "
                      f"({', '.join(sorted(GROUP_SERVICES))} or stream)")


def restart_one_by_one(inv: Inventory, hosts: list[Host], report: Reporter, timeout: float = 60,
                       poll: float = 1.0) -> None:
    """Restart each host's service in turn; the next waits until the last one's health check passes."""
    for host in restart_order(inv, hosts):
        service = service_for(host)
        with ssh.connect(host) as conn:
            started = time.monotonic()
            report(f"restarting {service.unit}", host.name, event="restart")
            result = conn.run(f"sudo -n systemctl restart {shlex.quote(service.unit)}", hide=True, warn=True,
                              in_stream=False, timeout=180)
            if result.exited != 0:
                raise RoadieError(f"{host.name}: restarting {service.unit} failed: "
                                  f"{(result.stderr.strip().splitlines() or ['no output'])[-1]}; stopped here")
            deadline = time.monotonic() + timeout
            while True:
                ok, detail = service.check(conn, inv)
                if ok:
                    break
                if time.monotonic() >= deadline:
                    raise RoadieError(f"{host.name}: {service.unit} not healthy {timeout:.0f} s after its restart "
                                      f"({detail}); stopped here, later hosts untouched")
                time.sleep(poll)
            report(f"healthy again in {time.monotonic() - started:.1f} s ({detail})", host.name, event="healthy")


# ------------------------------------------------------------------ maintenance mode
def render_page(message: str, retry_after: int, template: str = "maintenance.html.j2") -> str:
    """The maintenance page from templates/, autoescaped (the message is the operator's text)."""
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=True, undefined=StrictUndefined,
                      keep_trailing_newline=True)
    return env.get_template(template).render(message=message, retry_after=retry_after,
                                             minutes=max(1, round(retry_after / 60)))


def set_mode(conn: ssh.HostConnection, on: bool, page: str = "", retry_after: int = 120) -> str:
    """Replace the maintenance page when one is given (HAProxy reloads when it changed), then flip the
    mode in the map file and at runtime; both through the balancer's helper, as root writes them."""
    state = "on" if on else "off"
    balancer = Balancer(conn)
    page_result = balancer.command("maintenance-page", stdin=page).strip() if page else "unchanged"
    balancer.command("maintenance", state, str(int(retry_after)))
    return page_result


def mode(conn: ssh.HostConnection) -> str:
    """'on' or 'off' as HAProxy has it now (the runtime map, not the file)."""
    answer = Balancer(conn).command("maintenance-show")
    for line in answer.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] == "mode":
            return parts[2]
    raise RoadieError(f"{conn.inventory_host.name}: maintenance map has no mode entry; run the balancer playbook")


def turn_on(inventory_name: str | None, message: str, retry_after: int, terminal: Terminal) -> None:
    """`fab maintenance.on`: say what clients will get, ask, then serve the page from every balancer."""
    inv = inventory.load(inventory_name)
    balancers = inv.group("balancer")
    page = render_page(message, retry_after)
    terminal.say(f"maintenance: every request to {', '.join(h.name for h in balancers)} will get 503 "
                 f"(Retry-After {retry_after}) with the page from templates/maintenance.html.j2")
    terminal.confirm("turn maintenance mode on")
    with Guarded(inv, "maintenance-on", hosts=[h.name for h in balancers], message=message):
        for host in balancers:
            with ssh.connect(host) as conn:
                how = set_mode(conn, True, page, retry_after)
                terminal.say(f"maintenance on (page {how})", host.name)


def turn_off(inventory_name: str | None, terminal: Terminal) -> None:
    """`fab maintenance.off`: ask, then stop serving the page from every balancer."""
    inv = inventory.load(inventory_name)
    balancers = inv.group("balancer")
    terminal.confirm("turn maintenance mode off")
    with Guarded(inv, "maintenance-off", hosts=[h.name for h in balancers]):
        for host in balancers:
            with ssh.connect(host) as conn:
                set_mode(conn, False)
                terminal.say("maintenance off", host.name)


def modes(inventory_name: str | None) -> Iterator[tuple[str, str]]:
    """(balancer, 'on' or 'off') for each balancer, as each one answers."""
    for host in inventory.load(inventory_name).group("balancer"):
        with ssh.connect(host) as conn:
            yield host.name, mode(conn)


# ------------------------------------------------------------------ the change pipeline, for on-call changes
class Guarded(Change):
    """An on-call change through the one change pipeline (roadie/change/pipeline.py): lease with heartbeat, audit
    record, interrupts. `lock=False` records without taking the lock (`fab run`).

        with Guarded(inv, "drain", hosts=["stream2"], message=...) as change:
            ...           # change.conn is the lock host's connection; change.detail goes into the record
    """

    def __init__(self, inv: Inventory, action: str, *, hosts: list[str], message: str = "", release: str = "",
                 lock: bool = True) -> None:
        super().__init__(lock_host(inv), action, hosts=hosts, message=message, release=release, take_lock=lock,
                         ttl=inv.lease_ttl)
