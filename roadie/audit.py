"""The audit log: one JSON line per deploy, rollback, failover or forced unlock.

Each event goes to the lock host (shared by every operator and CI job) and to a local file.
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

from roadie import lock, ssh
from roadie.errors import RoadieError
from roadie.paths import ROOT

LOCAL_LOG = ROOT / "logs" / "audit.log"
REMOTE_NAME = "audit.log"

_APPEND = r'''
import os, sys
path = os.path.join(sys.argv[1], "audit.log")
os.makedirs(sys.argv[1], exist_ok=True)
fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
os.write(fd, sys.argv[2].encode() + b"\n")
os.close(fd)
'''


def event(action: str, *, result: str, release: str = "", hosts: list[str] | tuple[str, ...] = (),
          duration_s: float | None = None, **extra: object) -> dict:
    """An audit record: who, when, what, on which hosts, with what result."""
    record = {"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "who": lock.who(), "action": action,
              "release": release, "hosts": list(hosts), "result": result}
    if duration_s is not None:
        record["duration_s"] = round(duration_s, 1)
    record.update(extra)
    return record


def record(conn, entry: dict, state_dir: str = lock.STATE_DIR, local: Path = LOCAL_LOG) -> None:  # noqa: ANN001
    """Append one line locally and on the lock host (O_APPEND: concurrent writers never interleave)."""
    line = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    local.parent.mkdir(parents=True, exist_ok=True)
    with open(local, "a") as handle:
        handle.write(line + "\n")
    if conn is not None:
        result = conn.run(ssh.python_command(_APPEND, state_dir, line), hide=True, warn=True, in_stream=False)
        if result.exited != 0:
            raise RoadieError(f"could not write the audit log on the lock host: {result.stderr.strip()[-200:]}")


def read(conn, last: int = 20, state_dir: str = lock.STATE_DIR) -> list[dict]:  # noqa: ANN001
    """The last entries of the lock host's audit log (the shared one)."""
    if last < 1:
        raise RoadieError(f"--last must be at least 1, got {last}")
    path = shlex.quote(f"{state_dir}/{REMOTE_NAME}")
    result = conn.run(f"test -f {path} && tail -n {int(last)} {path} || true", hide=True, warn=True,
                      in_stream=False)
    entries = []
    for line in result.stdout.splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            entries.append({"unparsed": line})
    return entries
