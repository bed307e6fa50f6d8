"""`fab cache`'s probe on a cache host: Redis's INFO and key counts, and (asked for) a flush.

roadie.cache.client.cache runs this on the host as the deploy user, with roadie.remote.command:
  redis_cache.py ARGS-JSON      (stdin: one line, the password of the Redis user ARGS names)
ARGS: {"user": ACL user, "port": port on 127.0.0.1, "pattern": a glob or null, "flush": bool}
It prints one JSON line: role, used_memory, maxmemory, clients, hits, misses, evicted, keys; with a
pattern also "matching" (keys that match); with flush also "flushed" and "keys_after". A flush deletes
the matching keys (FLUSHDB for "*", else UNLINK in batches of 500) and is refused on a replica. The
password reaches redis-cli in its environment (REDISCLI_AUTH), never on a command line. A refusal or a
redis-cli error is one line on stderr, exit status 1.

Standard library only: it runs on the host's python3.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

BATCH = 500
TIMEOUT_S = 120
ERRORS = ("ERR", "NOAUTH", "NOPERM", "WRONGPASS")   # redis-cli prints a server's refusal and exits 0


class Redis:
    """redis-cli against the local server, as one ACL user."""

    def __init__(self, user: str, port: int, password: str) -> None:
        self.env = dict(os.environ, REDISCLI_AUTH=password)
        self.base = ["redis-cli", "--no-auth-warning", "--user", user, "-h", "127.0.0.1", "-p", str(port)]

    def __call__(self, *words: str, check: bool = True) -> str:
        done = subprocess.run(self.base + list(words), capture_output=True, text=True, env=self.env,
                              timeout=TIMEOUT_S, check=False)
        if check and (done.returncode != 0 or done.stdout.startswith(ERRORS)):
            sys.exit(f"redis-cli {words[0]}: {(done.stderr or done.stdout).strip()[:200]}")
        return done.stdout


def probe(cli: Redis, pattern: str | None, flush: bool) -> dict:
    """What the module docstring says, from the server `cli` talks to."""
    info = dict(line.split(":", 1) for line in cli("INFO").splitlines() if ":" in line and not line.startswith("#"))
    out = {"role": info.get("role"), "used_memory": int(info.get("used_memory", 0)),
           "maxmemory": int(info.get("maxmemory", 0)), "clients": int(info.get("connected_clients", 0)),
           "hits": int(info.get("keyspace_hits", 0)), "misses": int(info.get("keyspace_misses", 0)),
           "evicted": int(info.get("evicted_keys", 0)), "keys": int(cli("DBSIZE").strip() or 0)}
    if pattern is not None:
        keys = [k for k in cli("--scan", "--pattern", pattern).splitlines() if k]
        out["matching"] = len(keys)
        if flush:
            if out["role"] != "master":
                sys.exit("this Redis is a replica; flush its master")
            if pattern == "*":
                cli("FLUSHDB")
            else:
                for i in range(0, len(keys), BATCH):
                    cli("UNLINK", *keys[i:i + BATCH])
            out["flushed"] = len(keys)
            out["keys_after"] = int(cli("DBSIZE").strip() or 0)
    return out


def main(argv: list[str]) -> int:
    args = json.loads(argv[1])
    cli = Redis(args["user"], args["port"], sys.stdin.readline().rstrip("\n"))
    print(json.dumps(probe(cli, args.get("pattern"), bool(args.get("flush")))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
