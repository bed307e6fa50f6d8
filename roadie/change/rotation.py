"""Stream hosts out of rotation on purpose: who drained them, why and when, kept on the lock host.

`fab drain HOST --message WHY` records the host here and `fab undrain HOST` clears it, so `fab status`
can tell a host an operator took out from one that fell out (or was left out by a command that died).
The record is drained.json in the deploy user's state directory on the lock host (the first balancer,
the host roadie.change.lock uses), changed only under flock(2) by roadie/remote/rotation_state.py, which
follows no link. Times are the lock host's clock.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from roadie import remote
from roadie.change.lock import STATE_DIR, Runner

PROGRAM = "rotation_state.py"


@dataclass(frozen=True)
class Drained:
    """One host drained on purpose."""

    host: str
    by: str
    why: str
    at: float          # the lock host's clock (seconds since the epoch)

    def describe(self) -> str:
        """One line: "drained by alice@laptop: kernel upgrade"."""
        why = " ".join(self.why.split()) or "no message"
        return f"drained by {' '.join(self.by.split())}: {why}"


def _call(conn: Runner, op: str, payload: dict, state_dir: str) -> dict:
    return remote.ask(conn, PROGRAM, op, state_dir, json.dumps(payload),
                      what=f"on-purpose drains on {remote.host_label(conn)}: {op}")


def _drained(records: dict) -> dict[str, Drained]:
    return {host: Drained(host, rec["by"], rec["why"], float(rec["at"])) for host, rec in sorted(records.items())}


def record(conn: Runner, host: str, who: str, why: str, *, state_dir: str = STATE_DIR) -> None:
    """Record on the lock host that `host` is out of rotation on purpose (replaces an earlier record)."""
    _call(conn, "record", {"host": host, "by": who, "why": why}, state_dir)


def clear(conn: Runner, host: str, *, state_dir: str = STATE_DIR) -> bool:
    """Remove `host`'s record; False when there was none."""
    return bool(_call(conn, "clear", {"host": host}, state_dir)["cleared"])


def on_purpose(conn: Runner, *, state_dir: str = STATE_DIR) -> dict[str, Drained]:
    """Every host recorded as drained on purpose, by name."""
    return _drained(_call(conn, "list", {}, state_dir)["drained"])
