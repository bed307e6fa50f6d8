"""Rewrites the stream service's env file for `stream-task use-database` (run as root by that wrapper).

Only reorders the hosts already in STREAM_DATABASE_URL: the new primary goes first, the others keep
their order. An address that is not there is refused, so whoever may call the wrapper can steer the
service between its own database hosts but never to another server. The file is replaced atomically
with its owner and mode. Plain Python, standard library only; the unit tests import it from the role.
"""

import json
import os
import sys


class Refused(ValueError):
    """The change is not allowed or the file is not what we expect."""


def host_of(entry: str) -> str:
    """'10.0.0.1:5432' -> '10.0.0.1', '[fd00::1]:5432' -> 'fd00::1', 'db1' -> 'db1'."""
    if entry.startswith("["):
        return entry[1:entry.index("]")]
    return entry.rsplit(":", 1)[0] if ":" in entry else entry


def reorder_database_url(line: str, first: str) -> str:
    """The STREAM_DATABASE_URL line with host `first` moved to the front; the rest byte for byte."""
    key, sep, url = line.partition("=")
    if key.strip() != "STREAM_DATABASE_URL" or not sep:
        raise Refused("not a STREAM_DATABASE_URL line")
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise Refused("STREAM_DATABASE_URL has no scheme")
    userinfo, at, rest = rest.rpartition("@")
    cut = min([i for i in (rest.find("/"), rest.find("?")) if i >= 0] or [len(rest)])
    hostlist, tail = rest[:cut], rest[cut:]
    hosts = [h for h in hostlist.split(",") if h]
    chosen = [h for h in hosts if host_of(h) == first]
    if not chosen:
        raise Refused(f"{first} is not one of the database hosts in STREAM_DATABASE_URL "
                      f"({', '.join(host_of(h) for h in hosts)})")
    hosts = chosen[:1] + [h for h in hosts if host_of(h) != first]
    if len(hosts) > 1 and "target_session_attrs=" not in tail:
        tail += ("&" if "?" in tail else "?") + "target_session_attrs=read-write"
    return key + "=" + scheme + "://" + userinfo + at + ",".join(hosts) + tail


def use_database(path: str, first: str) -> bool:
    """Put `first` at the front of the env file's database hosts; True if the file changed."""
    st = os.stat(path)
    with open(path) as handle:
        lines = handle.read().split("\n")
    i = next((n for n, line in enumerate(lines) if line.startswith("STREAM_DATABASE_URL=")), None)
    if i is None:
        raise Refused(f"no STREAM_DATABASE_URL line in {path}")
    new = reorder_database_url(lines[i], first)
    if new == lines[i]:
        return False
    lines[i] = new
    tmp = os.path.join(os.path.dirname(path), ".stream.env.roadie-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines))
        handle.flush()
        os.fsync(handle.fileno())
    os.chown(tmp, st.st_uid, st.st_gid)
    os.chmod(tmp, st.st_mode & 0o7777)
    os.replace(tmp, path)
    return True


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "use-database":
        sys.exit("usage: stream_env.py use-database ENV_FILE ADDRESS")
    try:
        print(json.dumps({"changed": use_database(sys.argv[2], sys.argv[3])}))
    except (Refused, OSError) as exc:
        sys.exit(f"stream-task: {exc}")
