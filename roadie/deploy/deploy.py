"""Rolling deploys and rollbacks of the stream service behind HAProxy.

plan -> lease (change.Change) -> stage on every host in parallel -> migrations once -> per batch: live
capacity guard, drain, wait for sessions, switch, restart, health gate, enable, check through the balancer.
Any failure in a batch puts that batch back on its previous release and into rotation, stops the deploy
and says which host failed which gate and which hosts run which release. A first Ctrl-C makes the batch
in hand safe and stops (exit 130); the lease is renewed by a heartbeat from the plan to the last audit line.
Hosts left out of rotation by a lost command come first in the plan; hosts drained on purpose
(`fab drain`) stay out of it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from roadie.change import rollout, rotation
from roadie.change.pipeline import Change, stop_if_interrupted
from roadie.core import contract, ssh
from roadie.core.errors import Interrupted, RoadieError
from roadie.core.fleet import Fleet
from roadie.core.inventory import Host, Inventory
from roadie.deploy import builder, release, stream_host, wheelhouse
from roadie.deploy.balancer import Balancer

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


class Rollout:
    """Runs a plan against real hosts. Construct, then call `run()` inside the deploy lock."""

    def __init__(self, fleet: Fleet, options: Options, report: Reporter, change: Change | None = None) -> None:
        self.fleet = fleet
        self.options = options
        self.report = report
        self.change = change
        self.conns: dict[str, ssh.HostConnection] = {}
        self.lb_conn: ssh.HostConnection | None = None
        self.balancer: Balancer | None = None
        # The release each host runs, as last read or switched to under the lock (saves a read per batch).
        self.running: dict[str, str | None] = {}
        self.out: set[str] = set()        # hosts this command took out of rotation and has not put back
        self.touched: set[str] = set()    # hosts of the batch in hand that were switched or restarted
        self.cut: dict[str, int] = {}     # host -> sessions still open when its drain limit ran out
        if change is not None:
            change.state = self.state

    def state(self) -> list[str]:
        """What this command leaves behind, host by host (printed when a second Ctrl-C stops it)."""
        lines = [f"{h}: OUT OF ROTATION (drained by this command)" for h in sorted(self.out)]
        by_release: dict[str, list[str]] = {}
        for host, rel in self.running.items():
            by_release.setdefault(rel or "no release", []).append(host)
        lines += [f"release {rel}: {', '.join(sorted(hosts))}" for rel, hosts in sorted(by_release.items())]
        return lines

    def split(self) -> str:
        """'R1 on stream1; R0 on stream2, stream3': which hosts run which release now."""
        by_release: dict[str, list[str]] = {}
        for host in (h.name for h in self.fleet.stream):
            by_release.setdefault(self.running.get(host) or "unknown", []).append(host)
        return "; ".join(f"{rel} on {', '.join(hosts)}" for rel, hosts in by_release.items())

    # -------------------------------------------------------------- connections
    def connect(self) -> None:
        """Open every connection first: an unreachable or unverified host stops us before any change."""
        hosts = [*self.fleet.stream, self.fleet.balancer]
        errors = []

        def open_one(host: Host) -> tuple[Host, ssh.HostConnection | None]:
            try:
                return host, ssh.connect(host)
            except RoadieError as exc:
                errors.append(str(exc))
                return host, None

        for host, conn in ssh.parallel(open_one, hosts):
            if conn is None:
                continue
            if host.name == self.fleet.balancer.name:
                self.lb_conn = conn
            if host in self.fleet.stream:
                self.conns[host.name] = conn
        if errors:
            self.close()
            raise RoadieError(f"{len(errors)} host(s) unreachable, nothing changed: {'; '.join(errors)}")
        self.balancer = Balancer(self.lb_conn, self.options.backend)
        missing = [h.name for h in self.fleet.stream if h.name not in self.balancer.servers()]
        if missing:
            self.close()
            raise RoadieError(f"backend {self.options.backend} on {self.fleet.balancer.name} has no server for "
                              f"{', '.join(missing)}; run the balancer playbook")

    def close(self) -> None:
        for conn in [*self.conns.values(), self.lb_conn]:
            if conn is not None:
                conn.close()

    # -------------------------------------------------------------- stage
    def stage(self, artifact: Path, manifest: release.Manifest,
              then: Callable[[str], None] | None = None) -> None:
        """Upload and unpack on every host at once; nothing is switched. Hosts install only what the
        verified `manifest` lists (the artifact could have changed since `release.verify`). `then(host)`
        runs on each host's thread as soon as that host is staged (deploy runs the migrations there on the
        first host while the others still stage); its failure is reported like a staging failure.

        First every host is measured (stream_host.space): if one lacks room for the release, nothing is
        uploaded anywhere. A host that runs out of space all the same is named in one line and left with
        nothing of the release.
        """
        release_id = manifest.release_id
        remote = str(stream_host.RELEASES / f".{release_id}.tar.gz")
        deps = wheelhouse.dependencies(artifact)
        size = artifact.stat().st_size
        failed: list[str] = []

        def measure(host: Host) -> stream_host.Space | None:
            try:
                return stream_host.space(self.conns[host.name], manifest, size, deps, with_releases=True)
            except Exception as exc:  # every host's failure is reported, then we stop
                failed.append(ssh.describe_failure(host, exc))
                return None

        rooms = [found for found in ssh.parallel(measure, self.fleet.stream) if found is not None]
        listed = {found.host: found.present for found in rooms}
        if failed:
            raise RoadieError(f"free-space check failed, nothing uploaded: {'; '.join(failed)}")
        short = [found.describe() for found in rooms if not found.enough]
        if short:
            raise RoadieError(f"not enough space for release {release_id} on {'; '.join(short)}; nothing uploaded")

        def one(host: Host) -> None:
            conn = self.conns[host.name]
            started = time.monotonic()
            present = listed.get(host.name) or stream_host.releases(conn)
            self.running[host.name] = present.current
            if release_id in present.kept:
                self.report(f"release {release_id} already staged", host.name, event="staged")
            else:
                upload(host, conn, started)
            if then is not None:
                try:
                    then(host.name)
                except Exception as exc:  # raised as it is once every host is done
                    after.append(exc)

        def upload(host: Host, conn: ssh.HostConnection, started: float) -> None:
            try:
                conn.put(str(artifact), remote)
            except OSError as exc:  # paramiko's SFTP errors; a full filesystem is a bare "Failure"
                raise RoadieError(stream_host.upload_failure(conn, manifest, size, deps, remote, exc)) from None
            try:
                stream_host.stage(conn, remote, manifest, deps)
            except RoadieError as exc:
                raise RoadieError(stream_host.staging_failure(conn, manifest, size, deps, remote, str(exc))) from None
            self.report(f"staged {release_id} in {time.monotonic() - started:.1f} s", host.name, event="staged")

        errors: list[str] = []
        after: list[Exception] = []

        def guarded(host: Host) -> None:
            try:
                one(host)
            except Exception as exc:  # every host's failure is reported, then we stop
                errors.append(ssh.describe_failure(host, exc))

        ssh.parallel(guarded, self.fleet.stream)
        if errors:
            raise RoadieError(f"staging failed, nothing switched: {'; '.join(errors)}")
        if after:
            raise after[0]

    # -------------------------------------------------------------- one host
    def _take_out(self, host: str) -> None:
        assert self.balancer is not None
        self.out.add(host)
        self.balancer.drain(host)
        self.report("draining in HAProxy", host, event="drain")
        interrupted = (lambda: self.change.interrupted) if self.change is not None else None
        drained, state = self.balancer.wait_drained(host, self.options.drain_timeout, stop=interrupted)
        stop_if_interrupted(self.change, f"while {host} was draining")
        if not drained:
            # Never silently: the count goes to the output, --json and the audit record.
            self.cut[host] = state.sessions
            self.report(f"drain limit of {self.options.drain_timeout:.0f} s reached with {state.sessions} sessions "
                        f"still open: restarting cuts them", host, event="drain_timeout", sessions=state.sessions)

    def _put_back(self, host: str) -> None:
        assert self.balancer is not None
        self.balancer.enable(host)
        state = self.balancer.wait_up(host, timeout=self.options.health_timeout)
        self.out.discard(host)
        self.report(f"back in rotation ({state.status})", host, event="enabled")

    def _guard(self, label: str, hosts: list[str]) -> None:
        """The live capacity guard: HAProxy's own count of serving hosts, not the plan's."""
        assert self.balancer is not None
        servers = self.balancer.servers()
        serving = sorted(n for n, s in servers.items() if s.in_rotation and n not in hosts)
        # A batch of hosts that serve nothing (a fleet's first deploy: every server DOWN) takes nothing away.
        taking = [n for n in hosts if n in servers and servers[n].in_rotation]
        if taking and len(serving) < self.options.min_serving:
            out = sorted(n for n, s in servers.items() if not s.in_rotation and n not in hosts)
            raise RoadieError(f"{label}: taking {', '.join(hosts)} out would leave {len(serving)} hosts serving "
                              f"({', '.join(serving) or 'none'}), below --min-serving {self.options.min_serving}"
                              + (f"; already out of rotation: {', '.join(out)}" if out else "")
                              + "; this batch was not started")

    def _switch_and_gate(self, host: str, release_id: str | None) -> None:
        """Switch to `release_id` and restart; None restarts the host on the release it runs."""
        conn = self.conns[host]
        if self.change is not None:
            self.change.check()
        if release_id is None:
            release_id = stream_host.releases(conn).current
            if not release_id:
                raise RoadieError(f"{host}: no release deployed; nothing to restart")
        else:
            stream_host.switch(conn, release_id)
            self.running[host] = release_id
        self.touched.add(host)
        stream_host.restart(conn)
        gate = stream_host.health_gate(conn, release_id, passes=self.options.health_passes,
                                       interval=self.options.health_interval, timeout=self.options.health_timeout)
        self.report(f"healthy on {release_id} ({gate.describe()})", host, event="healthy")

    def _rollback_host(self, host: str, previous: str | None) -> str:
        """Return a host to its previous release and into rotation; the reason if that fails too."""
        conn = self.conns[host]
        try:
            if previous and host in self.touched:
                stream_host.switch(conn, previous)
                self.running[host] = previous
                stream_host.restart(conn)
                stream_host.health_gate(conn, previous, passes=1, interval=self.options.health_interval,
                                        timeout=self.options.health_timeout)
            self._put_back(host)
            self.report(f"rolled back to {previous}" if host in self.touched else "put back in rotation, unchanged",
                        host, event="rolled_back")
            return ""
        except Exception as exc:
            message = ssh.describe_failure(conn.inventory_host, exc)
            self.report(f"ROLLBACK FAILED, host left out of rotation: {message}", host, event="rollback_failed")
            return message

    # -------------------------------------------------------------- the rollout
    def run(self, plan: rollout.Plan, outcome: Outcome, restart_only: bool = False) -> None:
        """Run every batch; on failure roll the batch back and raise. `restart_only` switches nothing."""
        for batch in plan.batches:
            started = time.monotonic()
            label = f"batch {batch.number}/{len(plan.batches)}" + (" (canary)" if batch.canary else "")
            stop_if_interrupted(self.change, f"before {label}; {self.split()}; resume with the same command")
            if self.change is not None:
                self.change.check()
            self._guard(label, list(batch.hosts))
            self.report(f"{label}: {', '.join(batch.hosts)}; {batch.serving} hosts keep serving", event="batch")
            previous = {h: self.running[h] if h in self.running else stream_host.releases(self.conns[h]).current
                        for h in batch.hosts}
            self.touched = set()
            timing: dict = {"batch": batch.number, "hosts": list(batch.hosts)}
            try:
                t = time.monotonic()
                ssh.parallel(self._take_out, list(batch.hosts))
                timing["drain_s"] = time.monotonic() - t
                t = time.monotonic()
                target = None if restart_only else plan.release
                ssh.parallel(lambda h, target=target: self._switch_and_gate(h, target), list(batch.hosts))
                timing["switch_restart_health_s"] = time.monotonic() - t
                t = time.monotonic()
                ssh.parallel(self._put_back, list(batch.hosts))
                timing["enable_s"] = time.monotonic() - t
            except Exception as exc:  # roll this batch back whatever went wrong
                outcome.error = str(exc) if isinstance(exc, RoadieError) else f"{type(exc).__name__}: {exc}"
                self.report(f"{label} failed: {outcome.error}; rolling this batch back", event="batch_failed")
                back = [(h, previous[h]) for h in batch.hosts]
                problems = [p for p in ssh.parallel(lambda item: self._rollback_host(*item), back) if p]
                outcome.rolled_back.extend(h for h in batch.hosts if h in self.touched)
                if problems:
                    outcome.error += f"; rollback incomplete: {'; '.join(problems)}"
                if isinstance(exc, Interrupted):
                    raise Interrupted(f"{exc}: {label} rolled back, its hosts back in rotation; {self.split()}; "
                                      "resume with the same command") from None
                raise RoadieError(outcome.error) from None
            timing["total_s"] = time.monotonic() - started
            outcome.timings.append(timing)
            outcome.done_hosts.extend(batch.hosts)
            self.report(f"{label} done in {timing['total_s']:.1f} s", event="batch_done", **{
                k: round(v, 2) for k, v in timing.items() if k.endswith("_s")})
            if batch is not plan.batches[-1]:
                stop_if_interrupted(self.change, f"after {label}; {self.split()}; resume with the same command")

    def prune(self) -> None:
        def one(host: str) -> None:
            removed = stream_host.prune(self.conns[host], self.options.keep)
            if removed:
                self.report(f"removed old releases {', '.join(removed)}", host, event="pruned")

        ssh.parallel(one, list(self.conns))


def plan_order(fleet: Fleet, balancer: Balancer, drained: dict[str, rotation.Drained],
               report: Reporter) -> tuple[list[str], dict[str, str]]:
    """The stream hosts a rollout covers, in order, and those it leaves out with why.

    Hosts drained on purpose (`fab drain`, recorded with who and why) stay out until `fab undrain`. Hosts a
    lost command left out of rotation come first: they serve nobody, so bringing them back costs nothing.
    """
    servers = balancer.servers()
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
        order, outcome.left_out = plan_order(fleet, work.balancer, rotation.on_purpose(work.lb_conn), report)
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
        def migrate(host: str, change: Change) -> None:
            # Once, on the first host in the plan, as soon as it is staged: migrations are written to be
            # safe under the release that still runs (every rollout runs old and new side by side).
            if host != order[0]:
                return
            change.check()
            report("running migrations", host, event="migrate")
            stream_host.migrate(work.conns[host], manifest.release_id)

        with Change(fleet.balancer, "deploy", hosts=order, release=manifest.release_id, message=options.message,
                    report=report, conn=work.lb_conn) as change:
            work.change, change.state = change, work.state
            try:
                work.stage(artifact, manifest, then=lambda host: migrate(host, change))
                work.run(plan, outcome)
                outcome.ok = True
                work.prune()
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
                    report=report, conn=work.lb_conn) as change:
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
