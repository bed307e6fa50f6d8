"""The deploy lock: one holder at a time across every operator and CI, on a host the inventory names.

The lock is a JSON file on the lock host, read and changed only under flock(2) by
roadie/remote/deploy_lock.py run there, so acquiring, renewing, releasing and breaking are atomic. Each holder gets a
random token; only that token releases or renews it. A lock past its TTL is expired and the next
taker records that it took over; `--force` breaks a live one and the audit log says who did.
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
import socket
import time
from dataclasses import asdict, dataclass
from typing import Protocol

from roadie import remote
from roadie.core import contract, inventory
from roadie.core.errors import RoadieError

# A lease, not a long hold: every change renews it with a heartbeat (roadie/change/pipeline.py), so the lock of an
# operator who was killed or cut off lapses within this many seconds (the inventory's roadie_lease_ttl, if set).
DEFAULT_TTL = inventory.DEFAULT_LEASE_TTL
STATE_DIR = contract.STATE_DIR

# roadie/remote/: reads and changes the lock file under flock(2) on the lock host.
PROGRAM = "deploy_lock.py"


class Runner(Protocol):
    """Anything that runs a command on the lock host (a Fabric connection)."""

    def run(self, command: str, **kwargs): ...


@dataclass
class LockInfo:
    """Who holds the deploy lock, for what, and until when."""

    owner: str
    operation: str
    release: str
    message: str
    token: str = ""
    acquired_at: float = 0.0
    expires_at: float = 0.0

    def describe(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        age = max(0, int(now - self.acquired_at))
        left = int(self.expires_at - now)
        state = f"expires in {left} s" if left > 0 else f"expired {-left} s ago"
        what = f"{self.operation} {self.release}".strip()
        return f"held by {self.owner} for {what} since {age} s ago ({state}): {self.message or 'no message'}"


def who() -> str:
    """user@host of the operator or CI job, as it says itself ($ROADIE_OPERATOR or the local user name).

    A claim, kept for the lock and the audit record; the evidence of who it was is what the lock
    host's audit helper adds to each record: the sudo user and the SSH key sshd accepted.
    """
    user = os.environ.get("ROADIE_OPERATOR") or getpass.getuser()
    return f"{user}@{socket.gethostname()}"


def _call(conn: Runner, op: str, state_dir: str, payload: dict) -> dict:
    return remote.ask(conn, PROGRAM, op, state_dir, json.dumps(payload),
                      what=f"deploy lock on {remote.host_label(conn)}: {op}")


def _info(data: dict | None) -> LockInfo | None:
    if not data:
        return None
    fields = LockInfo.__dataclass_fields__
    return LockInfo(**{k: v for k, v in data.items() if k in fields})


@dataclass
class Lock:
    """A held deploy lock; release it when done (it is also a context manager)."""

    conn: Runner
    info: LockInfo
    state_dir: str = STATE_DIR
    replaced: LockInfo | None = None   # an expired or forced lock this one took over

    def renew(self, ttl: int = DEFAULT_TTL) -> None:
        out = _call(self.conn, "renew", self.state_dir, {"token": self.info.token, "ttl": ttl})
        if not out["done"]:
            holder = _info(out["held"])
            raise RoadieError("lost the deploy lock: " + (holder.describe(out["now"]) if holder else "it is gone"))

    def release(self) -> None:
        _call(self.conn, "release", self.state_dir, {"token": self.info.token})

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire(conn: Runner, operation: str, release: str = "", message: str = "", *, ttl: int = DEFAULT_TTL,
            force: bool = False, state_dir: str = STATE_DIR, owner: str | None = None) -> Lock:
    """Take the deploy lock or fail with one line saying who holds it."""
    if ttl <= 0:
        raise RoadieError(f"lock TTL must be positive, got {ttl}")
    info = LockInfo(owner=owner or who(), operation=operation, release=release, message=message,
                    token=secrets.token_hex(16))
    out = _call(conn, "acquire", state_dir, {"info": asdict(info), "ttl": ttl, "force": force})
    if not out["done"]:
        holder = _info(out["held"])
        raise RoadieError(f"deploy lock on {remote.host_label(conn)} is " + holder.describe(out["now"]))
    return Lock(conn, _info(out["info"]), state_dir, _info(out.get("replaced")))


def status(conn: Runner, state_dir: str = STATE_DIR) -> tuple[LockInfo | None, float]:
    """The current holder (None when free) and the lock host's clock."""
    out = _call(conn, "status", state_dir, {})
    return _info(out["held"]), out["now"]


def force_release(conn: Runner, state_dir: str = STATE_DIR) -> LockInfo | None:
    """Break the lock whoever holds it; returns who held it."""
    holder, _ = status(conn, state_dir)
    if holder is not None:
        _call(conn, "release", state_dir, {"force": True})
    return holder
