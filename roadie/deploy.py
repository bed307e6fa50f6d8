"""Rolling deploys and rollbacks of the stream service behind HAProxy.

plan -> lock -> stage on every host in parallel -> migrations once -> per batch: drain, wait for
sessions, switch, restart, health gate, enable, check through the balancer. Any failure in a batch
puts that batch back on its previous release and into rotation, stops the deploy and says which
host failed which gate. The lock is held from the plan to the last audit line.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from roadie import audit, lock, release, rollout, ssh, stream_host
from roadie.balancer import Balancer
from roadie.errors import RoadieError
from roadie.inventory import Host, Inventory

DEFAULT_KEEP = 5


class Reporter:
    """Host-prefixed progress lines, or one JSON event per line for CI (`--json`)."""

    def __init__(self, as_json: bool = False, stream=None) -> None:  # noqa: ANN001
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
    drain_timeout: float = 60.0
    health_timeout: float = 60.0
    health_passes: int = 3
    health_interval: float = 0.5
    keep: int = DEFAULT_KEEP
    lock_ttl: int = lock.DEFAULT_TTL
    backend: str = "stream"
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


@dataclass
class Fleet:
    """The hosts a rollout touches, from the inventory."""

    stream: list[Host]
    balancer: Host

    @classmethod
    def from_inventory(cls, inv: Inventory, group: str = "stream") -> Fleet:
        stream = inv.group(group)
        balancers = inv.group("balancer")
        return cls(stream=stream, balancer=balancers[0])


class Rollout:
    """Runs a plan against real hosts. Construct, then call `run()` inside the deploy lock."""

    def __init__(self, fleet: Fleet, options: Options, report: Reporter) -> None:
        self.fleet = fleet
        self.options = options
        self.report = report
        self.conns: dict[str, ssh.HostConnection] = {}
        self.lb_conn: ssh.HostConnection | None = None
        self.balancer: Balancer | None = None
        # The release each host runs, as last read or switched to under the lock (saves a read per batch).
        self.running: dict[str, str | None] = {}

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
    def stage(self, artifact: Path, manifest: release.Manifest) -> None:
        """Upload and unpack on every host at once; nothing is switched. Hosts install only what the
        verified `manifest` lists (the artifact could have changed since `release.verify`)."""
        release_id = manifest.release_id
        remote = str(stream_host.RELEASES / f".{release_id}.tar.gz")
        deps = release.dependencies(artifact)

        def one(host: Host) -> None:
            conn = self.conns[host.name]
            started = time.monotonic()
            present = stream_host.releases(conn)
            self.running[host.name] = present.current
            if release_id in present.kept:
                self.report(f"release {release_id} already staged", host.name, event="staged")
                return
            conn.put(str(artifact), remote)
            stream_host.stage(conn, remote, manifest, deps)
            self.report(f"staged {release_id} in {time.monotonic() - started:.1f} s", host.name, event="staged")

        errors = []

        def guarded(host: Host) -> None:
            try:
                one(host)
            except Exception as exc:  # noqa: BLE001 - every host's failure is reported, then we stop
                errors.append(ssh.describe_failure(host, exc))

        ssh.parallel(guarded, self.fleet.stream)
        if errors:
            raise RoadieError(f"staging failed, nothing switched: {'; '.join(errors)}")

    # -------------------------------------------------------------- one host
    def _take_out(self, host: str) -> None:
        assert self.balancer is not None
        self.balancer.drain(host)
        self.report("draining in HAProxy", host, event="drain")
        drained, state = self.balancer.wait_drained(host, self.options.drain_timeout)
        if not drained:
            self.report(f"drain timeout after {self.options.drain_timeout:.0f} s with {state.sessions} sessions; "
                        "going on", host, event="drain_timeout")

    def _put_back(self, host: str) -> None:
        assert self.balancer is not None
        self.balancer.enable(host)
        state = self.balancer.wait_up(host, timeout=self.options.health_timeout)
        self.report(f"back in rotation ({state.status})", host, event="enabled")

    def _switch_and_gate(self, host: str, release_id: str | None) -> None:
        """Switch to `release_id` and restart; None restarts the host on the release it runs."""
        conn = self.conns[host]
        if release_id is None:
            release_id = stream_host.releases(conn).current
            if not release_id:
                raise RoadieError(f"{host}: no release deployed; nothing to restart")
        else:
            stream_host.switch(conn, release_id)
            self.running[host] = release_id
        stream_host.restart(conn)
        gate = stream_host.health_gate(conn, release_id, passes=self.options.health_passes,
                                       interval=self.options.health_interval, timeout=self.options.health_timeout)
        self.report(f"healthy on {release_id} ({gate.describe()})", host, event="healthy")

    def _rollback_host(self, host: str, previous: str | None) -> str:
        """Return a host to its previous release and into rotation; the reason if that fails too."""
        conn = self.conns[host]
        try:
            if previous:
                stream_host.switch(conn, previous)
                self.running[host] = previous
                stream_host.restart(conn)
                stream_host.health_gate(conn, previous, passes=1, interval=self.options.health_interval,
                                        timeout=self.options.health_timeout)
            self._put_back(host)
            self.report(f"rolled back to {previous}", host, event="rolled_back")
            return ""
        except Exception as exc:  # noqa: BLE001
            message = ssh.describe_failure(conn.inventory_host, exc)
            self.report(f"ROLLBACK FAILED, host left out of rotation: {message}", host, event="rollback_failed")
            return message

    # -------------------------------------------------------------- the rollout
    def run(self, plan: rollout.Plan, outcome: Outcome, restart_only: bool = False) -> None:
        """Run every batch; on failure roll the batch back and raise. `restart_only` switches nothing."""
        for batch in plan.batches:
            started = time.monotonic()
            label = f"batch {batch.number}/{len(plan.batches)}" + (" (canary)" if batch.canary else "")
            self.report(f"{label}: {', '.join(batch.hosts)}; {batch.serving} hosts keep serving", event="batch")
            previous = {h: self.running[h] if h in self.running else stream_host.releases(self.conns[h]).current
                        for h in batch.hosts}
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
            except Exception as exc:  # noqa: BLE001 - roll this batch back whatever went wrong
                outcome.error = str(exc) if isinstance(exc, RoadieError) else f"{type(exc).__name__}: {exc}"
                self.report(f"{label} failed: {outcome.error}; rolling this batch back", event="batch_failed")
                back = [(h, previous[h]) for h in batch.hosts]
                problems = [p for p in ssh.parallel(lambda item: self._rollback_host(*item), back) if p]
                outcome.rolled_back.extend(batch.hosts)
                if problems:
                    outcome.error += f"; rollback incomplete: {'; '.join(problems)}"
                raise RoadieError(outcome.error) from None
            timing["total_s"] = time.monotonic() - started
            outcome.timings.append(timing)
            outcome.done_hosts.extend(batch.hosts)
            self.report(f"{label} done in {timing['total_s']:.1f} s", event="batch_done", **{
                k: round(v, 2) for k, v in timing.items() if k.endswith("_s")})

    def prune(self) -> None:
        def one(host: str) -> None:
            removed = stream_host.prune(self.conns[host], self.options.keep)
            if removed:
                self.report(f"removed old releases {', '.join(removed)}", host, event="pruned")

        ssh.parallel(one, list(self.conns))


def deploy(fleet: Fleet, artifact: Path, manifest, options: Options, report: Reporter,  # noqa: ANN001
           dry_run: bool = False) -> Outcome:
    """Roll a verified release artifact out to the fleet. Raises RoadieError on failure (after rollback)."""
    plan = rollout.plan(manifest.release_id, [h.name for h in fleet.stream], options.batch, options.canary,
                        options.min_serving)
    for line in plan.describe():
        report(line.strip(), event="plan")
    outcome = Outcome(release=manifest.release_id, ok=False)
    if dry_run:
        report("dry run: nothing changed", event="dry_run")
        outcome.ok = True
        return outcome
    work = Rollout(fleet, options, report)
    started = time.monotonic()
    work.connect()
    try:
        held = lock.acquire(work.lb_conn, "deploy", manifest.release_id, options.message, ttl=options.lock_ttl)
        if held.replaced:
            report(f"took over an expired lock: {held.replaced.describe()}", event="lock_takeover")
        try:
            work.stage(artifact, manifest)
            held.renew(options.lock_ttl)
            report("running migrations", fleet.stream[0].name, event="migrate")
            stream_host.migrate(work.conns[fleet.stream[0].name], manifest.release_id)
            try:
                work.run(plan, outcome)
                outcome.ok = True
                work.prune()
            except RoadieError as exc:
                outcome.error = outcome.error or str(exc)
        except RoadieError as exc:
            outcome.error = outcome.error or str(exc)
        finally:
            outcome.duration_s = time.monotonic() - started
            audit.record(work.lb_conn, audit.event(
                "deploy", result="ok" if outcome.ok else "failed", release=manifest.release_id,
                hosts=[h.name for h in fleet.stream], duration_s=outcome.duration_s,
                done=outcome.done_hosts, rolled_back=outcome.rolled_back, error=outcome.error))
            held.release()
    finally:
        work.close()
    if not outcome.ok:
        raise RoadieError(f"deploy of {manifest.release_id} failed: {outcome.error}")
    report(f"deployed {manifest.release_id} to {len(outcome.done_hosts)} hosts in {outcome.duration_s:.1f} s",
           event="done")
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
        with lock.acquire(work.lb_conn, "rollback", to, options.message, ttl=options.lock_ttl):
            try:
                work.run(plan, outcome)
                outcome.ok = True
            except RoadieError as exc:
                outcome.error = outcome.error or str(exc)
            finally:
                outcome.duration_s = time.monotonic() - started
                audit.record(work.lb_conn, audit.event(
                    "rollback", result="ok" if outcome.ok else "failed", release=to, hosts=todo,
                    duration_s=outcome.duration_s, done=outcome.done_hosts, error=outcome.error))
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
    built = release.build(out_dir)
    manifest = release.verify(built.path)
    fleet = Fleet.from_inventory(inv)
    deploy(fleet, built.path, manifest, Options(message=message), report)
    if seed:
        seed_fleet(fleet, report)
    return built.path, manifest
