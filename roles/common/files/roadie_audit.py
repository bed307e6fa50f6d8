#!/usr/bin/python3 -I
"""roadie-audit: append one record to the fleet's audit log, as root, for the deploy user.

Installed by the common role as /usr/local/sbin/roadie-audit (root:root 0755). The deploy user may run
exactly `sudo -n /usr/local/sbin/roadie-audit append` with one JSON object on stdin; the program takes
no other argument, so the log's place (/var/log/roadie/audit.log) cannot be chosen by the caller.

To the caller's record it adds what the caller cannot claim, read on this host by root:
  seq, prev     position in the log and sha256 of the previous line (of "" for the first): a hash chain
  host, host_ts this host's name and clock
  sudo_user     who ran sudo (SUDO_USER, set by sudo itself)
  ssh_key       SHA256 fingerprint of the key the caller's SSH session logged in with, with ssh_key_type
                and ssh_from; found from root-owned evidence only: the session's privileged sshd monitor
                among the caller's ancestor processes, and that process's own "Accepted publickey" line
                in the journal (journald sets _PID and _COMM from the kernel). The user-writable
                ExposeAuthInfo file is never read. When none is found: null, and ssh_key_note says why.

The log directory and every directory above it are opened one by one without following links and
must belong to root and not be writable by others; the log is opened with O_NOFOLLOW|O_APPEND and
appended to under flock(2), so nothing the deploy user can write is on the path.
"""

import errno
import fcntl
import hashlib
import json
import os
import pwd
import re
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

LOG_DIR = "/var/log/roadie"
LOG_NAME = "audit.log"
LOG_MODE = 0o644          # world-readable: records name people, hosts and commands, never secrets
MAX_RECORD = 64 * 1024    # bytes of JSON on stdin
GENESIS = hashlib.sha256(b"").hexdigest()
HOST_FIELDS = frozenset({"seq", "prev", "host", "host_ts", "sudo_user", "ssh_key", "ssh_key_type", "ssh_from",
                         "ssh_key_note"})
JOURNALCTL = "/usr/bin/journalctl"
SSHD_COMMS = ("sshd", "sshd-session")      # OpenSSH 9.8 runs sessions as sshd-session
JOURNAL_TRIES = 5                          # journald may file the login line a moment after the command starts
ACCEPTED = re.compile(r"Accepted publickey for (?P<user>\S+) from (?P<addr>\S+) port \d+ ssh2: "
                      r"(?P<type>[A-Z0-9-]+) (?P<fp>SHA256:[A-Za-z0-9+/]{43})(?: |$)")


class Refused(Exception):
    """A record or a log this program will not write: one line on stderr, exit status 1."""


# ------------------------------------------------------------------ the record
def parse_record(data: bytes, limit: int = MAX_RECORD) -> dict:
    """The caller's record: one JSON object of at most `limit` bytes that sets no host field."""
    if len(data) > limit:
        raise Refused(f"record is larger than {limit} bytes")
    try:
        record = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise Refused(f"record is not JSON: {type(exc).__name__}") from None
    if not isinstance(record, dict):
        raise Refused(f"record must be a JSON object, got {type(record).__name__}")
    claimed = sorted(HOST_FIELDS & record.keys())
    if claimed:
        raise Refused(f"record may not set fields this host adds: {', '.join(claimed)}")
    return record


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def line_hash(line: bytes) -> str:
    """sha256 of one log line without its newline: the next record's `prev`."""
    return hashlib.sha256(line).hexdigest()


def timestamp(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


# ------------------------------------------------------------------ the log
def open_log_dir(path: str, owner_uid: int = 0) -> int:
    """A descriptor of `path`, opened from / one directory at a time without following links.

    Every directory must belong to root (or `owner_uid`) and be writable by nobody else, except a
    sticky directory such as /tmp, where only an entry's owner can replace it. The last one is created
    (0755) when missing and must belong to `owner_uid` and be writable by it alone.
    """
    if not os.path.isabs(path) or ".." in path.split("/"):
        raise Refused(f"log directory {path} must be an absolute path without '..'")
    parts = [p for p in path.split("/") if p]
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    where = ""
    try:
        for i, name in enumerate(parts):
            where += "/" + name
            last = i == len(parts) - 1
            try:
                child = _open_dir(name, fd, where)
            except FileNotFoundError:
                if not last:
                    raise Refused(f"{where} does not exist") from None
                os.mkdir(name, 0o755, dir_fd=fd)
                child = _open_dir(name, fd, where)
            os.close(fd)
            fd = child
            info = os.fstat(fd)
            if last:
                if info.st_uid != owner_uid or info.st_mode & 0o022:
                    raise Refused(f"log directory {where} must belong to uid {owner_uid} and be writable by it "
                                  f"alone (uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):04o})")
            elif info.st_uid not in (0, owner_uid) or (info.st_mode & 0o002 and not info.st_mode & stat.S_ISVTX) \
                    or (info.st_mode & 0o020 and info.st_gid != 0):
                raise Refused(f"{where} is writable by users other than root (uid {info.st_uid}, "
                              f"mode {stat.S_IMODE(info.st_mode):04o})")
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_dir(name: str, dir_fd: int, where: str) -> int:
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            kind = "a symbolic link" if stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode) else "not a directory"
            raise Refused(f"{where} is {kind}; refusing to follow it") from None
        raise


def _open_log(dir_fd: int, owner_uid: int) -> int:
    flags = os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(LOG_NAME, flags | os.O_CREAT | os.O_EXCL, LOG_MODE, dir_fd=dir_fd)
        os.fchmod(fd, LOG_MODE)          # whatever sudo's umask was
    except FileExistsError:
        try:
            fd = os.open(LOG_NAME, flags, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise Refused(f"{LOG_NAME} is a symbolic link; refusing to follow it") from None
            raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != owner_uid or info.st_mode & 0o022 or info.st_nlink != 1:
        os.close(fd)
        raise Refused(f"{LOG_NAME} must be a regular file of uid {owner_uid} with one link, writable by it alone "
                      f"(uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):04o}, links {info.st_nlink})")
    return fd


def last_line(fd: int) -> bytes | None:
    """The file's last line without its newline, or None for an empty file."""
    size = os.fstat(fd).st_size
    if size == 0:
        return None
    if os.pread(fd, 1, size - 1) != b"\n":
        raise Refused(f"{LOG_NAME} ends in a partial line; root must move it aside before anything is appended")
    end, tail = size - 1, b""
    while True:
        start = max(0, end - 65536)
        tail = os.pread(fd, end - start, start) + tail
        cut = tail.rfind(b"\n")
        if cut >= 0:
            return tail[cut + 1:]
        if start == 0:
            return tail
        end = start


def append(record: dict, evidence: dict, *, log_dir: str = LOG_DIR, owner_uid: int = 0,
           now: Callable[[], float] = time.time) -> str:
    """Append `record` with the host's fields and its place in the chain; returns the line written.

    `log_dir` and `owner_uid` exist for the unit tests only: the command line cannot set them.
    """
    dir_fd = open_log_dir(log_dir, owner_uid)
    try:
        fd = _open_log(dir_fd, owner_uid)
    finally:
        os.close(dir_fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        previous = last_line(fd)
        if previous is None:
            seq, prev = 1, GENESIS
        else:
            try:
                seq = json.loads(previous)["seq"] + 1
            except (ValueError, KeyError, TypeError):
                raise Refused(f"the last line of {LOG_NAME} is not a record; root must move the log aside") from None
            prev = line_hash(previous)
        full = {**record, **evidence, "seq": seq, "prev": prev, "host": socket.gethostname(),
                "host_ts": timestamp(now())}
        line = json.dumps(full, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        data = line.encode() + b"\n"
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
        return line
    finally:
        os.close(fd)      # releases the flock


# ------------------------------------------------------------------ who logged in, with which key
@dataclass
class Proc:
    """What /proc says about one process."""

    pid: int
    ppid: int
    uid: int              # real uid
    euid: int
    cmdline: str
    start_ticks: int      # clock ticks after boot


def read_proc(proc_root: Path, pid: int) -> Proc | None:
    """One process from a /proc tree, or None when it is gone."""
    base = proc_root / str(pid)
    try:
        status = (base / "status").read_text()
        cmdline = (base / "cmdline").read_bytes()
        stat_line = (base / "stat").read_text()
    except OSError:          # gone, or never there
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    uids = fields["Uid"].split()
    start = int(stat_line.rsplit(")", 1)[1].split()[19])      # field 22, after "pid (comm)"
    title = cmdline.replace(b"\0", b" ").decode("utf-8", "replace").strip()
    return Proc(pid, int(fields["PPid"]), int(uids[0]), int(uids[1]), title, start)


def ancestors(proc_root: Path, pid: int, limit: int = 64) -> list[Proc]:
    """`pid` and its ancestors up to init, from a /proc tree."""
    chain: list[Proc] = []
    while pid > 0 and len(chain) < limit:
        proc = read_proc(proc_root, pid)
        if proc is None:
            break
        chain.append(proc)
        pid = proc.ppid
    return chain


def session_monitor(chain: list[Proc]) -> Proc | None:
    """The SSH session's privileged monitor ("sshd: deploy [priv]"): the first root-owned sshd ancestor.

    A user can name a process anything, but not own it as root. A root-owned sshd that is not a
    session monitor (the listener) means the caller did not come through an SSH session.
    """
    for proc in chain:
        if proc.uid == 0 and proc.euid == 0 and proc.cmdline.startswith(tuple(f"{c}:" for c in SSHD_COMMS)):
            return proc if proc.cmdline.endswith("[priv]") else None
    return None


def process_start_us(proc_root: Path, proc: Proc, ticks_per_s: int | None = None) -> int:
    """When a process started, in microseconds since the epoch (to the clock tick)."""
    btime = next(int(line.split()[1]) for line in (proc_root / "stat").read_text().splitlines()
                 if line.startswith("btime "))
    ticks = ticks_per_s or os.sysconf("SC_CLK_TCK")
    return int((btime + proc.start_ticks / ticks) * 1_000_000)


def parse_accepted(journal_json: str, user: str, pid: int, not_before_us: int) -> dict | None:
    """The key of the last "Accepted publickey for USER" line that sshd[pid] logged since it started.

    `journal_json` is `journalctl -o json` output. Lines from before `not_before_us` belong to an
    earlier process with the same PID; _PID and _COMM are set by journald, not by the sender.
    """
    found = None
    for raw in journal_json.splitlines():
        try:
            entry = json.loads(raw)
            when = int(entry["__REALTIME_TIMESTAMP"])
        except (ValueError, KeyError, TypeError):
            continue
        message = entry.get("MESSAGE")
        if (not isinstance(message, str) or entry.get("_PID") != str(pid) or entry.get("_COMM") not in SSHD_COMMS
                or when < not_before_us):
            continue
        match = ACCEPTED.match(message)
        if match and match["user"] == user:
            found = {"ssh_key": match["fp"], "ssh_key_type": match["type"], "ssh_from": match["addr"]}
    return found


def journal_of(pid: int) -> str:
    """The journal entries of sshd process `pid`, as JSON lines ("" when unreadable).

    Entries of an earlier process with the same PID are told apart by time in parse_accepted.
    """
    argv = [JOURNALCTL, "-q", "--no-pager", "-o", "json", f"_PID={pid}",
            *(f"_COMM={comm}" for comm in SSHD_COMMS)]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False,
                                env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "SYSTEMD_PAGER": ""})
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout


def ssh_evidence(user: str, *, proc_root: Path = Path("/proc"), pid: int | None = None,
                 journal: Callable[[int], str] = journal_of, tries: int = JOURNAL_TRIES,
                 sleep: Callable[[float], None] = time.sleep) -> dict:
    """ssh_key, ssh_key_type and ssh_from of the caller's SSH login; ssh_key None and a note when unknown."""
    monitor = session_monitor(ancestors(proc_root, os.getpid() if pid is None else pid))
    if monitor is None:
        return {"ssh_key": None, "ssh_key_note": "no sshd session monitor among the caller's processes"}
    not_before = process_start_us(proc_root, monitor) - 2_000_000   # start time is known to a tick
    for attempt in range(tries):
        found = parse_accepted(journal(monitor.pid), user, monitor.pid, not_before)
        if found:
            return found
        if attempt + 1 < tries:
            sleep(0.2)
    return {"ssh_key": None,
            "ssh_key_note": f"no 'Accepted publickey for {user}' line from sshd[{monitor.pid}] in the journal"}


# ------------------------------------------------------------------ command line
def main(argv: list[str]) -> int:
    if argv != ["append"]:
        print("usage: roadie-audit append  (one JSON object on stdin)", file=sys.stderr)
        return 2
    try:
        if os.geteuid() != 0:
            raise Refused("must run as root: sudo -n /usr/local/sbin/roadie-audit append")
        record = parse_record(sys.stdin.buffer.read(MAX_RECORD + 1))
        sudo_user = os.environ.get("SUDO_USER") or None
        user = sudo_user or pwd.getpwuid(os.getuid()).pw_name
        try:
            evidence = ssh_evidence(user)
        except Exception as exc:  # an unknown key is recorded as unknown; the record still goes in
            evidence = {"ssh_key": None, "ssh_key_note": f"key lookup failed: {type(exc).__name__}: {exc}"[:200]}
        line = append(record, {"sudo_user": sudo_user, **evidence})
    except (Refused, OSError) as exc:
        print(f"roadie-audit: {exc}", file=sys.stderr)
        return 1
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
