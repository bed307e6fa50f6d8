"""The deploy lock's state on the lock host: deploy.lock.json, read and changed only under flock(2).

roadie.change.lock runs this on the lock host as the deploy user, with roadie.remote.command:
  deploy_lock.py OP STATE_DIR PAYLOAD-JSON
  acquire  {"info": {...}, "ttl": s, "force": bool}  takes the lock when it is free or expired (or forced)
  release  {"token": ..., "force": bool}             removes it, for its holder's token (or forced)
  renew    {"token": ..., "ttl": s, "force": bool}   moves its expiry to now + ttl, for its holder's token
  status   {}                                        (or any other op) changes nothing
It prints one JSON line: {"now": <this host's clock>, "held": <the lock as it was, or null>, "done": bool},
plus "info" and "replaced" when `acquire` took the lock.

The state directory is made when missing; every op holds flock(2) on deploy.lock.guard, so two takers
never both get the lock. A change is written to deploy.lock.json.tmp, synced, then renamed over the lock. No
file is opened through a link, nor one that is not a regular file: one planted at any of the three names
makes the op fail, and nothing is read or written through it.

Standard library only: it runs on the host's python3.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import sys
import time

FILE = "deploy.lock.json"
GUARD = "deploy.lock.guard"


def _open(path: str, flags: int) -> int:
    """A regular file of the state directory: never through a link planted in its place (O_NOFOLLOW: ELOOP),
    never a FIFO or device, which would block the open or the read while the guard is held."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path} is not a regular file")
    return fd


def _write(path: str, info: dict) -> None:
    tmp = path + ".tmp"
    with os.fdopen(_open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w") as f:
        json.dump(info, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def apply(op: str, state_dir: str, payload: dict) -> dict:
    """Do `op` on the lock in `state_dir` under its flock; what the controller is told (see above)."""
    os.makedirs(state_dir, exist_ok=True)
    path = os.path.join(state_dir, FILE)
    with os.fdopen(_open(os.path.join(state_dir, GUARD), os.O_WRONLY | os.O_CREAT | os.O_APPEND), "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        try:
            with os.fdopen(_open(path, os.O_RDONLY)) as f:
                held = json.load(f)
        except FileNotFoundError:
            held = None
        now = time.time()
        live = held is not None and held.get("expires_at", 0) > now
        out = {"now": now, "held": held, "done": False}
        if op == "acquire":
            if not live or payload.get("force"):
                info = dict(payload["info"], acquired_at=now, expires_at=now + payload["ttl"])
                _write(path, info)
                out.update(done=True, info=info, replaced=held)
        elif op in ("release", "renew") and held is not None and (
                held.get("token") == payload.get("token") or payload.get("force")):
            if op == "release":
                os.unlink(path)
            else:
                held["expires_at"] = now + payload["ttl"]
                _write(path, held)
            out["done"] = True
        return out


def main(argv: list[str]) -> int:
    op, state_dir, payload = argv[1], argv[2], json.loads(argv[3])
    print(json.dumps(apply(op, state_dir, payload)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
