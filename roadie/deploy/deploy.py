"""Rolling deploys and rollbacks of the stream service behind HAProxy.

plan -> lease (change.Change) -> stage on every host in parallel, migrations once from the first host staged
(the first batch drains meanwhile; nothing is switched before they end) -> per batch: live capacity
guard, drain, wait for sessions, switch, restart, health gate, enable, check through the balancer; old
releases are pruned while the last batch returns to rotation.
Any failure in a batch puts that batch back on its previous release and into rotation, stops the deploy
and says which host failed which gate and which hosts run which release. A first Ctrl-C makes the batch
in hand safe and stops (exit 130); the lease is renewed by a heartbeat from the plan to the last audit line.
Hosts left out of rotation by a lost command come first in the plan; hosts drained on purpose
(`fab drain`) stay out of it. The batches run in executor.py; a rollout's Options, Reporter and Outcome
are in types.py.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, wait
from pathlib import Path

from roadie.change import rollout, rotation
from roadie.change.pipeline import Change
from roadie.core import ssh
from roadie.core.errors import Interrupted, RoadieError
from roadie.core.fleet import Fleet
from roadie.core.inventory import Host, Inventory
from roadie.deploy import builder, release, stream_host
from roadie.deploy.balancer import ServerState
from roadie.deploy.executor import BACKGROUND, Rollout
from roadie.deploy.types import Options, Outcome, Reporter


def plan_order(fleet: Fleet, servers: dict[str, ServerState], drained: dict[str, rotation.Drained],
               report: Reporter) -> tuple[list[str], dict[str, str]]:
    """The stream hosts a rollout covers, in order, and those it leaves out with why (`servers`: the
    backend as HAProxy reports it).

    Hosts drained on purpose (`fab drain`, recorded with who and why) stay out until `fab undrain`. Hosts a
    lost command left out of rotation come first: they serve nobody, so bringing them back costs nothing.
    """
    names = [h.name for h in fleet.stream]
    left_out = {h: f"drained on purpose by {d.by}: {d.why or 'no reason given'}" for h, d in drained.items()
                if h in names}
    for host, why in left_out.items():
        report(f"left out of this plan: {why} (`fab undrain {host}` brings it back)", host, event="left_out")
    stranded = [h for h in names if h not in left_out and h in servers and not servers[h].in_rotation]
    for host in stranded:
        report(f"out of rotation ({servers[host].status}) and not drained on purpose: first in the plan",
               host, event="stranded")
    order = stranded + [h for h in names if h not in left_out and h not in stranded]
    if not order:
        raise RoadieError("every stream host is drained on purpose; nothing to roll out to (`fab undrain HOST`)")
    return order, left_out


def deploy(fleet: Fleet, artifact: Path, manifest, options: Options, report: Reporter,
           dry_run: bool = False) -> Outcome:
    """Roll a verified release artifact out to the fleet. Raises RoadieError on failure (after rollback)."""
    rollout.plan(manifest.release_id, [h.name for h in fleet.stream], options.batch, options.canary,
                 options.min_serving)        # a bad plan fails before any host is contacted
    outcome = Outcome(release=manifest.release_id, ok=False)
    work = Rollout(fleet, options, report)
    started = time.monotonic()
    work.connect()
    try:
        assert work.balancer is not None and work.lb_conn is not None
        order, outcome.left_out = plan_order(fleet, work.servers_seen, rotation.on_purpose(work.lb_conn), report)
        try:
            plan = rollout.plan(manifest.release_id, order, options.batch, options.canary, options.min_serving)
        except RoadieError as exc:
            if not outcome.left_out:
                raise
            raise RoadieError(f"{exc}; already out of rotation: {', '.join(sorted(outcome.left_out))} "
                              "(drained on purpose); nothing changed") from None
        for line in plan.describe():
            report(line.strip(), event="plan")
        if dry_run:
            report("dry run: nothing changed", event="dry_run")
            outcome.ok = True
            return outcome
        migrating = threading.Lock()
        migrations: list[Future] = []

        def migrate(host: str, change: Change) -> None:
            change.check()
            report("running migrations", host, event="migrate")
            stream_host.migrate(work.conns[host], manifest.release_id)

        def start_migrations(host: str, change: Change) -> None:
            # Once, from the first host to be staged, at once and beside the rest of staging and the first
            # drain: migrations are written to be safe under the release that still runs (every rollout runs
            # old and new side by side), and every stream host reaches the database the same way.
            with migrating:
                if not migrations:
                    migrations.append(BACKGROUND.submit(migrate, host, change))

        with Change(fleet.balancer, "deploy", hosts=order, release=manifest.release_id, message=options.message,
                    report=report, conn=work.lb_conn, ttl=fleet.lease_ttl) as change:
            work.change, change.state = change, work.state
            try:
                try:
                    work.stage(artifact, manifest, then=lambda host: start_migrations(host, change))
                    work.run(plan, outcome, finish=work.prune, before_switch=migrations[0] if migrations else None)
                finally:
                    wait(migrations)   # the lease outlives them, whatever stopped the deploy
                outcome.ok = True
            except RoadieError as exc:
                outcome.error = outcome.error or str(exc)
                change.detail.update(done=outcome.done_hosts, rolled_back=outcome.rolled_back,
                                     cut_sessions=work.cut, fleet=work.split())
                if isinstance(exc, Interrupted):
                    raise
                # Once a host was switched, the last line says which hosts run which release.
                where = f"; the fleet now runs {work.split()}" if outcome.done_hosts or outcome.rolled_back else ""
                raise RoadieError(f"deploy of {manifest.release_id} failed: {outcome.error}{where}") from None
            finally:
                outcome.cut_sessions = dict(work.cut)
                outcome.duration_s = time.monotonic() - started
            change.detail.update(done=outcome.done_hosts, cut_sessions=work.cut, left_out=outcome.left_out)
    finally:
        work.close()
    cut = "; ".join(f"{h}: {n} sessions cut" for h, n in outcome.cut_sessions.items())
    report(f"deployed {manifest.release_id} to {len(outcome.done_hosts)} hosts in {outcome.duration_s:.1f} s"
           + (f" ({cut})" if cut else ""), event="done", cut_sessions=outcome.cut_sessions,
           left_out=sorted(outcome.left_out))
    return outcome


def host_releases(fleet: Fleet) -> list[stream_host.Releases]:
    """current, previous and kept releases on every stream host (unreachable hosts fail the call)."""
    def one(host: Host) -> stream_host.Releases:
        conn = ssh.connect(host)
        try:
            return stream_host.releases(conn)
        finally:
            conn.close()

    return ssh.parallel(one, fleet.stream)


def rollback(fleet: Fleet, options: Options, report: Reporter, to: str | None = None,
             dry_run: bool = False) -> Outcome:
    """Roll the fleet back to `to` (default: the previous release), rolling, with the same gates."""
    work = Rollout(fleet, options, report)
    work.connect()
    try:
        states = {h: stream_host.releases(c) for h, c in work.conns.items()}
        if to is None:
            previous = {s.previous for s in states.values()}
            if len(previous) != 1 or None in previous:
                raise RoadieError("hosts disagree on or lack a previous release "
                                  f"({', '.join(f'{h}={s.previous}' for h, s in states.items())}); name one with --to")
            to = previous.pop()
        lacking = [h for h, s in states.items() if to not in s.kept]
        if lacking:
            raise RoadieError(f"release {to} is not on {', '.join(lacking)}; `fab releases` lists what is kept")
        todo = [h.name for h in fleet.stream if states[h.name].current != to]
        if not todo:
            report(f"every host already runs {to}; nothing to do", event="done")
            return Outcome(release=to, ok=True)
        plan = rollout.plan(to, todo, options.batch, canary=False,
                            min_serving=min(options.min_serving, len(fleet.stream) - 1))
        for line in plan.describe():
            report(line.strip(), event="plan")
        outcome = Outcome(release=to, ok=False)
        if dry_run:
            report("dry run: nothing changed", event="dry_run")
            outcome.ok = True
            return outcome
        started = time.monotonic()
        with Change(fleet.balancer, "rollback", hosts=todo, release=to, message=options.message,
                    report=report, conn=work.lb_conn, ttl=fleet.lease_ttl) as change:
            work.change, change.state = change, work.state
            try:
                work.run(plan, outcome)
                outcome.ok = True
            except Interrupted:
                raise
            except RoadieError as exc:
                outcome.error = outcome.error or str(exc)
            finally:
                outcome.duration_s = time.monotonic() - started
                change.detail.update(done=outcome.done_hosts, error=outcome.error, cut_sessions=work.cut)
            if not outcome.ok:
                change.result = "failed"
    finally:
        work.close()
    if not outcome.ok:
        raise RoadieError(f"rollback to {to} failed: {outcome.error}")
    report(f"rolled back {len(outcome.done_hosts)} hosts to {to} in {outcome.duration_s:.1f} s", event="done")
    return outcome


def seed_fleet(fleet: Fleet, report: Reporter) -> None:
    """Demo catalogue (once) and audio files (every stream host) for the release each host runs."""
    for i, host in enumerate(fleet.stream):
        with ssh.connect(host) as conn:
            current = stream_host.releases(conn).current
            if not current:
                raise RoadieError(f"{host.name}: no release deployed yet; run `fab deploy` first")
            stream_host.seed(conn, current, with_db=i == 0)
        report("seeded " + ("catalogue and media" if i == 0 else "media"), host.name, event="seeded")


def build_and_deploy(inv: Inventory, out_dir: Path, message: str, report: Reporter,
                     seed: bool = False) -> tuple[Path, release.Manifest]:
    """Build a release from the working tree, deploy it with the default options, optionally seed."""
    built = builder.build(out_dir)
    manifest = release.verify(built.path)
    fleet = Fleet.from_inventory(inv)
    deploy(fleet, built.path, manifest, Options(message=message), report)
    if seed:
        seed_fleet(fleet, report)
    return built.path, manifest
