"""Rewrites the stream service's env file for `stream-task use-database` and `forget-database` (run as root
by that wrapper).

Puts a database host first in STREAM_DATABASE_URL (the others keep their order) or removes one (a
failed-over primary), never the last. The new first host must be in the URL already or in the list of
database hosts the role wrote into the wrapper (a host forgotten by one failover comes back with the
failback); any other address is refused, so whoever may call the wrapper can steer the service between
its own database hosts but never to another server. The file is replaced atomically
with its owner and mode. Plain Python, standard library only; the unit tests import it from the role.

It runs as root, so it trusts no path another account could have changed: every directory from / down
to the env file must be a real directory that only root can write, the env file a regular root-owned
file (opened with O_NOFOLLOW), and the new file is made with mkstemp beside it.
"""

import json
import os
import stat
import sys
import tempfile
from collections.abc import Callable


class Refused(ValueError):
    """The change is not allowed or the file is not what we expect."""


def host_of(entry: str) -> str:
    """'10.0.0.1:5432' -> '10.0.0.1', '[fd00::1]:5432' -> 'fd00::1', 'db1' -> 'db1'."""
    if entry.startswith("["):
        return entry[1:entry.index("]")]
    return entry.rsplit(":", 1)[0] if ":" in entry else entry


def _split_url(line: str) -> tuple[str, list[str], str]:
    """(everything before the host list, the hosts, everything after) of a STREAM_DATABASE_URL line."""
    key, sep, url = line.partition("=")
    if key.strip() != "STREAM_DATABASE_URL" or not sep:
        raise Refused("not a STREAM_DATABASE_URL line")
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise Refused("STREAM_DATABASE_URL has no scheme")
    userinfo, at, rest = rest.rpartition("@")
    cut = min([i for i in (rest.find("/"), rest.find("?")) if i >= 0] or [len(rest)])
    hostlist, tail = rest[:cut], rest[cut:]
    return key + "=" + scheme + "://" + userinfo + at, [h for h in hostlist.split(",") if h], tail


def reorder_database_url(line: str, first: str, known: tuple[str, ...] = ()) -> str:
    """The STREAM_DATABASE_URL line with host `first` moved to the front; the rest byte for byte. A host
    not in the URL is added in front (with the others' port) only when it is one of `known`."""
    head, hosts, tail = _split_url(line)
    chosen = [h for h in hosts if host_of(h) == first]
    if not chosen and first in known and hosts:
        written = hosts[0]
        port = written[len(f"[{host_of(written)}]" if written.startswith("[") else host_of(written)):]
        chosen = [(f"[{first}]" if ":" in first else first) + port]
    if not chosen:
        raise Refused(f"{first} is not one of the database hosts in STREAM_DATABASE_URL "
                      f"({', '.join(host_of(h) for h in hosts)}) or the role's ({', '.join(known) or 'none'})")
    hosts = chosen[:1] + [h for h in hosts if host_of(h) != first]
    if len(hosts) > 1 and "target_session_attrs=" not in tail:
        tail += ("&" if "?" in tail else "?") + "target_session_attrs=read-write"
    return head + ",".join(hosts) + tail


def drop_database_host(line: str, gone: str) -> str:
    """The STREAM_DATABASE_URL line without host `gone` (a failed-over primary that must never take writes
    again); unchanged when it is not there. Refused when it is the only host left."""
    head, hosts, tail = _split_url(line)
    kept = [h for h in hosts if host_of(h) != gone]
    if len(kept) == len(hosts):
        return line
    if not kept:
        raise Refused(f"{gone} is the only database host in STREAM_DATABASE_URL; refusing to remove it")
    return head + ",".join(kept) + tail


def check_root_only(path: str, owner: int = 0) -> os.stat_result:
    """lstat of `path` after checking it and each directory above it: no link, owned by `owner`, and
    writable by nobody else. Refused otherwise (someone could swap what root is about to write)."""
    path = os.path.abspath(path)
    parts = path.split("/")[1:]
    for depth in range(len(parts) + 1):
        here = "/" + "/".join(parts[:depth])
        st = os.lstat(here)
        last = depth == len(parts)
        if stat.S_ISLNK(st.st_mode):
            raise Refused(f"{here} is a link; refusing to follow it")
        if not last and not stat.S_ISDIR(st.st_mode):
            raise Refused(f"{here} is not a directory")
        if last and not stat.S_ISREG(st.st_mode):
            raise Refused(f"{here} is not a regular file")
        if st.st_uid != owner or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
            raise Refused(f"{here} can be changed by another account than root; refusing to use it")
    return st


def rewrite_database_url(path: str, change: Callable[[str], str], owner: int = 0) -> bool:
    """Apply `change` to the env file's STREAM_DATABASE_URL line; True if the file changed."""
    st = check_root_only(path, owner)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd) as handle:
        if os.fstat(handle.fileno()).st_ino != st.st_ino:
            raise Refused(f"{path} changed while it was read")
        lines = handle.read().split("\n")
    i = next((n for n, line in enumerate(lines) if line.startswith("STREAM_DATABASE_URL=")), None)
    if i is None:
        raise Refused(f"no STREAM_DATABASE_URL line in {path}")
    new = change(lines[i])
    if new == lines[i]:
        return False
    lines[i] = new
    # mkstemp: O_CREAT|O_EXCL with a random name, in a directory only root can write.
    fd, tmp = tempfile.mkstemp(prefix=".stream.env.", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(lines))
            handle.flush()
            os.fchown(handle.fileno(), st.st_uid, st.st_gid)
            os.fchmod(handle.fileno(), st.st_mode & 0o7777)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return True


def use_database(path: str, first: str, owner: int = 0, known: tuple[str, ...] = ()) -> bool:
    """Put `first` at the front of the env file's database hosts; True if the file changed."""
    return rewrite_database_url(path, lambda line: reorder_database_url(line, first, known), owner)


def forget_database(path: str, gone: str, owner: int = 0) -> bool:
    """Remove `gone` from the env file's database hosts; True if the file changed."""
    return rewrite_database_url(path, lambda line: drop_database_host(line, gone), owner)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "use-database":
        def change(path: str, address: str) -> bool:
            return use_database(path, address, known=tuple(a for a in sys.argv[4].split(",") if a))
    elif len(sys.argv) == 4 and sys.argv[1] == "forget-database":
        change = forget_database
    else:
        sys.exit("usage: stream_env.py use-database ENV_FILE ADDRESS KNOWN,HOSTS | forget-database ENV_FILE ADDRESS")
    try:
        print(json.dumps({"changed": change(sys.argv[2], sys.argv[3])}))
    except (Refused, OSError) as exc:
        sys.exit(f"stream-task: {exc}")
