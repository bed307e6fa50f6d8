"""The deploy user's narrow path to HAProxy (run as root through sudo as /usr/local/sbin/roadie-haproxy).

The runtime API socket is root's alone: at admin level it could point a backend at any address, hand
out the listening sockets or kill every session. This helper lets the deploy user do exactly what
deploys and on-call need, each request checked before it reaches the socket:

    roadie-haproxy stat                               servers' state (show stat, CSV)
    roadie-haproxy state BACKEND SERVER ready|drain|maint   then the servers' state after it (show stat, CSV)
    roadie-haproxy weight BACKEND SERVER 0..256
    roadie-haproxy maintenance-show                   the maintenance map as HAProxy has it now
    roadie-haproxy maintenance on|off RETRY_AFTER     flip maintenance mode (file and runtime)
    roadie-haproxy maintenance-page < PAGE            replace the 503 page (HTML on stdin), then reload

Backends must be listed in the settings file (/etc/haproxy/roadie-helper.json, rendered by the role);
servers must exist in them. Files are written with mkstemp and rename in root-owned directories,
never through a link. Standard library only; the unit tests import it from the role.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
import tempfile

SETTINGS = "/etc/haproxy/roadie-helper.json"
NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
STATES = ("ready", "drain", "maint")
PAGE_LIMIT = 64 * 1024


class Refused(ValueError):
    """A request outside what the deploy user may ask for; one line on stderr, exit 2."""


def load_settings(path: str = SETTINGS) -> dict:
    with open(path) as handle:
        settings = json.load(handle)
    for key in ("socket", "backends", "maintenance_map", "maintenance_page"):
        if key not in settings:
            raise Refused(f"{path} has no {key!r}")
    return settings


def ask(socket_path: str, line: str, timeout: float = 10) -> str:
    """One runtime API command; an error answer becomes Refused."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(socket_path)
        conn.sendall(line.encode() + b"\n")
        chunks = []
        while data := conn.recv(65536):
            chunks.append(data)
    answer = b"".join(chunks).decode(errors="replace")
    lowered = answer.strip().lower()
    if lowered.startswith(("no such", "unknown command", "permission denied", "require")) \
            or "no such server" in lowered or "no such backend" in lowered:
        raise Refused(f"HAProxy answered: {answer.strip().splitlines()[0]}")
    return answer


def check_name(kind: str, value: str) -> str:
    if not NAME.fullmatch(value):
        raise Refused(f"bad {kind} name {value[:80]!r}")
    return value


def servers_of(stat_csv: str, backend: str) -> set[str]:
    """Server names of `backend` in `show stat` CSV (FRONTEND/BACKEND rows left out)."""
    lines = stat_csv.lstrip().splitlines()
    if not lines or not lines[0].startswith("# "):
        raise Refused("unexpected answer to show stat")
    header = lines[0][2:].split(",")
    px, sv = header.index("pxname"), header.index("svname")
    names = set()
    for row in lines[1:]:
        cells = row.split(",")
        if len(cells) > sv and cells[px] == backend and cells[sv] not in ("FRONTEND", "BACKEND"):
            names.add(cells[sv])
    return names


def check_server(settings: dict, backend: str, server: str) -> str:
    """'backend/server' once both are known: the backend listed in the settings, the server in it."""
    check_name("backend", backend)
    check_name("server", server)
    if backend not in settings["backends"]:
        raise Refused(f"backend {backend!r} is not one the deploy user may change "
                      f"({', '.join(settings['backends']) or 'none'})")
    if server not in servers_of(ask(settings["socket"], "show stat"), backend):
        raise Refused(f"backend {backend} has no server {server!r}")
    return f"{backend}/{server}"


def check_root_dir(path: str, owner: int = 0) -> None:
    """Every directory from / to `path`: a real directory that only root (`owner`) can write; a sticky
    one (/tmp) counts, since nobody else can rename root's entries in it."""
    parts = os.path.abspath(path).split("/")[1:]
    for depth in range(len(parts) + 1):
        here = "/" + "/".join(parts[:depth])
        st = os.lstat(here)
        if not stat.S_ISDIR(st.st_mode):
            raise Refused(f"{here} is not a directory (a link?); refusing to write under it")
        if st.st_uid not in (0, owner) or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
            raise Refused(f"{here} can be changed by another account than root; refusing to write under it")


def write_root_file(path: str, data: bytes, owner: int = 0) -> bool:
    """Replace `path` (root's, 0644) with `data` through mkstemp + rename; False when unchanged."""
    directory = os.path.dirname(path)
    check_root_dir(directory, owner)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        old = None
    else:
        with os.fdopen(fd, "rb") as handle:
            old = handle.read()
    if old == data:
        return False
    fd, tmp = tempfile.mkstemp(prefix=".roadie-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            os.fchmod(handle.fileno(), 0o644)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return True


def check_page(data: bytes) -> bytes:
    if len(data) > PAGE_LIMIT:
        raise Refused(f"the maintenance page is {len(data)} bytes, more than {PAGE_LIMIT}")
    if b"\0" in data:
        raise Refused("the maintenance page holds a NUL byte")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Refused(f"the maintenance page is not UTF-8 ({exc.reason})") from None
    return data


def main(argv: list[str], settings: dict, stdin: bytes | None = None) -> str:
    """Run one request; what to print."""
    if not argv:
        raise Refused("usage: roadie-haproxy stat | state B S ready|drain|maint | weight B S N | "
                      "maintenance-show | maintenance on|off RETRY_AFTER | maintenance-page")
    verb, args = argv[0], argv[1:]
    if verb == "stat" and not args:
        return ask(settings["socket"], "show stat")
    if verb == "state" and len(args) == 3:
        if args[2] not in STATES:
            raise Refused(f"bad state {args[2][:20]!r} (ready, drain or maint)")
        ask(settings["socket"], f"set server {check_server(settings, args[0], args[1])} state {args[2]}")
        # The state it leaves, in the same request: a deploy waits on it next (sessions, UP).
        return ask(settings["socket"], "show stat")
    if verb == "weight" and len(args) == 3:
        if not re.fullmatch(r"[0-9]{1,3}", args[2]) or int(args[2]) > 256:
            raise Refused(f"bad weight {args[2][:20]!r} (0 to 256)")
        return ask(settings["socket"], f"set weight {check_server(settings, args[0], args[1])} {int(args[2])}")
    if verb == "maintenance-show" and not args:
        return ask(settings["socket"], f"show map {settings['maintenance_map']}")
    if verb == "maintenance" and len(args) == 2:
        mode, retry = args
        if mode not in ("on", "off") or not re.fullmatch(r"[0-9]{1,6}", retry) or not 1 <= int(retry) <= 86400:
            raise Refused("usage: roadie-haproxy maintenance on|off RETRY_AFTER (1 to 86400 seconds)")
        # The file keeps the mode across reloads and restarts; the runtime API applies it at once.
        write_root_file(settings["maintenance_map"], f"mode {mode}\nretry_after {int(retry)}\n".encode())
        ask(settings["socket"], f"set map {settings['maintenance_map']} retry_after {int(retry)}")
        ask(settings["socket"], f"set map {settings['maintenance_map']} mode {mode}")
        return mode + "\n"
    if verb == "maintenance-page" and not args:
        if not write_root_file(settings["maintenance_page"], check_page(stdin or b"")):
            return "unchanged\n"
        # HAProxy reads the page at start-up only; a reload is seamless (master-worker).
        subprocess.run(["/usr/bin/systemctl", "reload", "haproxy.service"], check=True, timeout=60)
        return "reloaded\n"
    raise Refused(f"unknown or malformed request: {' '.join(argv)[:120]}")


if __name__ == "__main__":
    try:
        page = sys.stdin.buffer.read(PAGE_LIMIT + 1) if sys.argv[1:2] == ["maintenance-page"] else None
        sys.stdout.write(main(sys.argv[1:], load_settings(), page))
    except (Refused, OSError, subprocess.SubprocessError) as error:
        sys.exit(f"roadie-haproxy: {error}")
