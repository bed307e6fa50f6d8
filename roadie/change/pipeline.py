"""The one change pipeline: every command that changes the running fleet runs inside a `Change`.

    with Change(lock_host, "deploy", hosts=[...], release=rid, message=why) as change:
        ...
        change.check()          # before each step: the lease is still ours, or LeaseLost
        if change.interrupted:  # after a first Ctrl-C: finish or roll back the step in hand, then stop
            raise Interrupted(...)
        change.detail[...] = ...  # goes into the audit record

What it does, so no command does it on its own:
- **Lease.** The deploy lock on the lock host (first balancer), with a short TTL renewed by a heartbeat
  thread over a connection of its own. A killed operator's lease lapses within LEASE_TTL seconds and the
  next command takes it over (and says so). A renewal that fails marks the lease lost; `check()` then stops
  the command before its next step.
- **Audit.** One record on the fleet (roadie-audit, with the key sshd saw) when the change ends: ok,
  failed or interrupted, with the error and `detail`.
- **Interrupts.** The first SIGINT only sets `interrupted` (the caller makes the step in hand safe and
  raises `Interrupted`, exit 130); the second prints the state the command leaves behind (`state`, a
  callback the caller sets) and exits 130 at once; the lease then lapses by itself.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import FrameType

from roadie.change import audit, lock
from roadie.core import ssh
from roadie.core.errors import Interrupted, RoadieError
from roadie.core.fleet import Fleet
from roadie.core.inventory import Host, Inventory

LEASE_TTL = lock.DEFAULT_TTL   # seconds a lease lives without a renewal: a lost operator's lock lapses this fast
BEATS_PER_TTL = 6             # renewals in one TTL (every 15 s at 90): a few may fail or lag and the lease holds


class LeaseLost(RoadieError):
    """The lease could not be renewed (lock host unreachable, or someone broke the lock)."""


def lock_host(inv: Inventory) -> Host:
    """The host that holds the deploy lock and the audit log: the fleet's balancer."""
    balancer = Fleet.from_inventory(inv, partial=True).balancer
    if balancer is None:
        raise RoadieError(f"inventory {inv.name} has no balancer host to hold the deploy lock")
    return balancer


class Change:
    """One change to the running fleet: lease, heartbeat, audit record, interrupts (see the module)."""

    def __init__(self, host: Host, action: str, *, hosts: list[str], release: str = "", message: str = "",
                 take_lock: bool = True, ttl: int = LEASE_TTL, heartbeat: float | None = None,
                 report: Callable[..., None] | None = None, state_dir: str = lock.STATE_DIR,
                 conn: ssh.HostConnection | None = None) -> None:
        self.host, self.action, self.hosts, self.release, self.message = host, action, hosts, release, message
        self.take_lock, self.ttl, self.state_dir = take_lock, ttl, state_dir
        self.heartbeat = heartbeat if heartbeat is not None else ttl / BEATS_PER_TTL
        self.report = report or (lambda message, host=None, **data: print(f"{host or action}: {message}"))
        self.detail: dict = {}
        self.result: str | None = None
        self.interrupted = False
        self.lost = ""
        self.renewals = 0
        self.took_over: lock.LockInfo | None = None
        self.state: Callable[[], list[str]] = lambda: []
        # A caller already connected to the lock host lends its connection (one handshake fewer).
        self._borrowed = conn
        self.conn: ssh.HostConnection | None = conn
        self._lease: lock.Lock | None = None
        self._beat_conn: ssh.HostConnection | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._old_handler = None
        self._started = 0.0

    # -------------------------------------------------------------- enter / exit
    def __enter__(self) -> Change:
        if self.conn is None:
            self.conn = ssh.connect(self.host)
        try:
            if self.take_lock:
                self._lease = lock.acquire(self.conn, self.action, self.release, self.message, ttl=self.ttl,
                                           state_dir=self.state_dir)
                self.took_over = self._lease.replaced
                if self.took_over is not None:
                    self.report(f"took over a lapsed lease: {self.took_over.describe()}", event="lock_takeover")
                self._thread = threading.Thread(target=self._beat, name="roadie-lease", daemon=True)
                self._thread.start()
        except BaseException:
            self._close()
            raise
        # A change that takes no lock (`fab run`) keeps Ctrl-C as it is: it has no step to make safe.
        if self.take_lock and threading.current_thread() is threading.main_thread():
            self._old_handler = signal.signal(signal.SIGINT, self._on_sigint)
        self._started = time.monotonic()
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        if self._old_handler is not None:
            signal.signal(signal.SIGINT, self._old_handler)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        # The record and the release are apart on the lock host (the audit helper, the lock program): both
        # go at once, over the one connection.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="roadie-release") as pool:
            releasing = pool.submit(self._lease.release) if self._lease is not None and not self.lost else None
            try:
                self._record(exc_type, exc)
            finally:
                try:
                    if releasing is not None:
                        releasing.result()
                finally:
                    self._close()

    def _record(self, exc_type: type | None, exc: BaseException | None) -> None:
        """The change's audit record: ok, failed or interrupted, with its error and `detail`."""
        try:
            if exc is None:
                result, error = self.result or "ok", ""
            elif isinstance(exc, Interrupted):
                result, error = "interrupted", str(exc)
            else:
                result = "failed"
                error = str(exc) if isinstance(exc, RoadieError) else f"{exc_type.__name__}: {exc}"
            extra = dict(self.detail)
            # A command may have put its own error in the detail (a rollback's outcome): one error field.
            own = str(extra.pop("error", "") or "")
            error = error or own
            if self.took_over is not None:
                extra["took_over"] = self.took_over.describe()
            audit.record(self.conn, audit.event(self.action, result=result, release=self.release, hosts=self.hosts,
                                                duration_s=time.monotonic() - self._started, message=self.message,
                                                error=error, **extra))
        except RoadieError as audit_error:
            # The change's own failure is what the operator must see; the lost record is said too.
            if exc is None:
                raise
            if isinstance(exc, RoadieError):
                raise type(exc)(f"{exc} (and {audit_error})") from None
            print(f"error: {audit_error}", file=sys.stderr)

    def _close(self) -> None:
        for conn in (self.conn, self._beat_conn):
            if conn is not None and conn is not self._borrowed:
                conn.close()

    # -------------------------------------------------------------- lease
    def _beat(self) -> None:
        assert self._lease is not None
        lease: lock.Lock | None = None
        while not self._stop.wait(self.heartbeat):
            try:
                if lease is None:
                    # Its own connection, opened at the first beat: a short change never waits for it.
                    self._beat_conn = ssh.connect(self.host)
                    lease = lock.Lock(self._beat_conn, self._lease.info, self._lease.state_dir)
                lease.renew(self.ttl)
                self.renewals += 1
            except Exception as exc:  # any failure means the lease can no longer be trusted
                self.lost = str(exc)
                return

    def check(self) -> None:
        """Stop before the next step when the lease was lost."""
        if self.lost:
            raise LeaseLost(f"{self.action}: the deploy lock's lease could not be renewed ({self.lost}); "
                            "stopped before the next step")

    # -------------------------------------------------------------- interrupts
    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if not self.interrupted:
            self.interrupted = True
            print(f"\n{self.action}: interrupted: making the step in hand safe, then stopping "
                  "(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)
            return
        lines = []
        try:
            lines = self.state()
        except Exception as exc:  # the state is best effort; stopping is not
            lines = [f"state unknown ({type(exc).__name__}: {exc})"]
        out = [f"\n{self.action}: stopped at once by a second Ctrl-C; what it leaves behind:"]
        out += [f"  {line}" for line in lines or ["nothing changed yet"]]
        out.append(f"  the deploy lock's lease lapses within {self.ttl} s; the next deploy takes it over and "
                   "brings these hosts back into its plan")
        sys.stderr.write("\n".join(out) + "\n")
        sys.stderr.flush()
        os._exit(130)


def stop_if_interrupted(change: Change | None, what: str) -> None:
    """Raise Interrupted when a first Ctrl-C came in; `what` says where the command stops and how to resume."""
    if change is not None and change.interrupted:
        raise Interrupted(what)
