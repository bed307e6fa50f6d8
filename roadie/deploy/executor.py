"""The rollout executor: runs a plan (change.rollout) against the stream hosts behind HAProxy.

Connections first (an unreachable or unverified host stops it before any change); then, per batch: the
live capacity guard (HAProxy's count of serving hosts), drain, wait for sessions, switch, restart, health
gate, enable. Any failure in a batch puts that batch back on its previous release and into rotation and
raises. A first Ctrl-C (change.pipeline) makes the batch in hand safe and stops. Staging on every host
comes before the batches (staging.py); deploys, rollbacks and restarts drive it (deploy.py, maintenance.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

from roadie.change import rollout
from roadie.change.pipeline import Change, stop_if_interrupted
from roadie.core import ssh
from roadie.core.errors import Interrupted, RoadieError
from roadie.core.fleet import Fleet
from roadie.core.inventory import Host
from roadie.deploy import release, staging, stream_host, stream_service
from roadie.deploy.balancer import Balancer, ServerState
from roadie.deploy.types import Options, Outcome, Reporter

# Work that runs beside the batches, one piece at a time: a deploy's migrations (waited for before the
# first switch), then Rollout.run's `finish` while the last batch returns to rotation.
BACKGROUND = ThreadPoolExecutor(max_workers=1, thread_name_prefix="roadie-beside")


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
        self.servers_seen: dict[str, ServerState] = {}   # the backend as connect() found it (the plan's view)
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
        self.servers_seen = self.balancer.servers()
        missing = [h.name for h in self.fleet.stream if h.name not in self.servers_seen]
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
        """Upload and unpack on every host at once; nothing is switched (staging.stage). `then(host)` runs
        on each host's thread as soon as that host is staged; each host's current release is recorded."""
        staging.stage(self.conns, self.fleet.stream, artifact, manifest, self.report, self.running, then)

    # -------------------------------------------------------------- one host
    def _take_out(self, host: str) -> None:
        assert self.balancer is not None
        self.out.add(host)
        seen = self.balancer.drain(host)
        self.report("draining in HAProxy", host, event="drain")
        interrupted = (lambda: self.change.interrupted) if self.change is not None else None
        drained, state = self.balancer.wait_drained(host, self.options.drain_timeout, stop=interrupted, seen=seen)
        stop_if_interrupted(self.change, f"while {host} was draining")
        if not drained:
            # Never silently: the count goes to the output, --json and the audit record.
            self.cut[host] = state.sessions
            self.report(f"drain limit of {self.options.drain_timeout:.0f} s reached with {state.sessions} sessions "
                        "still open: going on; the restart cuts those the service holds (audio nginx sends goes on)",
                        host, event="drain_timeout", sessions=state.sessions)

    def _put_back(self, host: str) -> None:
        assert self.balancer is not None
        seen = self.balancer.enable(host)
        state = self.balancer.wait_up(host, timeout=self.options.health_timeout, seen=seen)
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
        stream_service.restart(conn)
        gate = stream_service.health_gate(conn, release_id, passes=self.options.health_passes,
                                       interval=self.options.health_interval, timeout=self.options.health_timeout)
        self.report(f"healthy on {release_id} ({gate.describe()})", host, event="healthy")

    def _rollback_host(self, host: str, previous: str | None) -> str:
        """Return a host to its previous release and into rotation; the reason if that fails too."""
        conn = self.conns[host]
        try:
            if previous and host in self.touched:
                stream_host.switch(conn, previous)
                self.running[host] = previous
                stream_service.restart(conn)
                stream_service.health_gate(conn, previous, passes=1, interval=self.options.health_interval,
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
    def run(self, plan: rollout.Plan, outcome: Outcome, restart_only: bool = False,
            finish: Callable[[], None] | None = None, before_switch: Future | None = None) -> None:
        """Run every batch; on failure roll the batch back and raise. `restart_only` switches nothing.

        `before_switch` (a deploy's migrations, already running) is waited for once the first batch is
        drained, before anything is switched: the drain and the migrations overlap. Its failure rolls that
        batch back unchanged. `finish` (a deploy's prune) runs beside the last batch's return to rotation,
        once that batch passed its health gate; it is waited for before anything else happens, and its
        failure is raised once the batch is back in rotation.
        """
        finishing: Future | None = None
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
                if before_switch is not None and batch is plan.batches[0]:
                    t = time.monotonic()
                    before_switch.result()
                    timing["before_switch_s"] = time.monotonic() - t
                    stop_if_interrupted(self.change, f"before {label} switched anything")
                t = time.monotonic()
                target = None if restart_only else plan.release
                ssh.parallel(lambda h, target=target: self._switch_and_gate(h, target), list(batch.hosts))
                timing["switch_restart_health_s"] = time.monotonic() - t
                if finish is not None and batch is plan.batches[-1]:
                    finishing = BACKGROUND.submit(finish)
                t = time.monotonic()
                ssh.parallel(self._put_back, list(batch.hosts))
                timing["enable_s"] = time.monotonic() - t
            except Exception as exc:  # roll this batch back whatever went wrong
                if finishing is not None:
                    wait([finishing])   # nothing runs beside a rollback; its own error is not the one to report
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
        if finishing is not None:
            finishing.result()

    def prune(self) -> None:
        def one(host: str) -> None:
            removed = stream_host.prune(self.conns[host], self.options.keep)
            if removed:
                self.report(f"removed old releases {', '.join(removed)}", host, event="pruned")

        ssh.parallel(one, list(self.conns))
