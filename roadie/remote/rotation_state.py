"""Which stream hosts are out of rotation on purpose: drained.json in the deploy user's state directory.

roadie.change.rotation runs this on the lock host (the first balancer) as the deploy user, with
roadie.remote.command:  rotation_state.py OP STATE_DIR PAYLOAD-JSON
  record  {"host": ..., "by": ..., "why": ...}   adds or replaces the host's record, `at` = this host's clock
  clear   {"host": ...}                          removes it ("cleared": whether there was one)
  list    {}                                     changes nothing
It prints one JSON line: {"now": <this host's clock>, "drained": {host: {"by", "why", "at"}}, "cleared": bool}.

drained.json is read and changed only under flock(2) on drained.json.lock, so two writers never lose a
record. No link is followed: the state directory, the lock file and drained.json are opened with
O_NOFOLLOW, and a change is written to a new file made with O_EXCL in the state directory (what mkstemp
does, relative to the directory's descriptor), then renamed over drained.json. A link, a file that is not
a regular file or one that does not parse is refused with one line on stderr (exit status 3) and left as
it is for the operator to look at.

Standard library only: it runs on the host's python3.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import stat
import sys
import time

from roadie.remote.answer import answer

FILE = "drained.json"
GUARD = FILE + ".lock"
MAX_BYTES = 1024 * 1024
MAX_TEXT = 1000
MAX_HOST = 253
OPS = ("record", "clear", "list")


class StateError(Exception):
    """A refusal: one line, and nothing is changed."""


def _text(payload: dict, key: str, limit: int, *, empty: bool = True) -> str:
    value = payload.get(key, "")
    if not isinstance(value, str) or len(value) > limit or (not empty and not value):
        raise StateError(f"bad {key!r} in the request: a string of {'0' if empty else '1'}..{limit} characters")
    return value


def _open_dir(state_dir: str) -> int:
    """The state directory's descriptor; made (0700) if missing, refused if it is a link."""
    try:
        os.mkdir(state_dir, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise StateError(f"cannot make {state_dir}: {exc.strerror}") from None
    try:
        return os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise StateError(f"refusing {state_dir}: not a directory (a link or another file)") from None
        raise StateError(f"cannot open {state_dir}: {exc.strerror}") from None


def _open_guard(dir_fd: int, state_dir: str) -> int:
    try:
        fd = os.open(GUARD, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600,
                     dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StateError(f"refusing {state_dir}/{GUARD}: it is a symbolic link") from None
        raise StateError(f"cannot open {state_dir}/{GUARD}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StateError(f"refusing {state_dir}/{GUARD}: not a regular file")
    return fd


def read(dir_fd: int, state_dir: str) -> dict:
    """The records in drained.json ({} when there is no file); the caller holds the guard's lock."""
    path = f"{state_dir}/{FILE}"
    try:
        fd = os.open(FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StateError(f"refusing {path}: it is a symbolic link; remove it") from None
        raise StateError(f"cannot open {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise StateError(f"refusing {path}: not a regular file; remove it")
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise StateError(f"refusing {path}: larger than {MAX_BYTES} bytes")
    try:
        records = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise StateError(f"{path} is not valid JSON ({exc}); fix or remove it") from None
    if not isinstance(records, dict) or not all(
            isinstance(host, str) and isinstance(rec, dict) and isinstance(rec.get("by"), str)
            and isinstance(rec.get("why"), str) and isinstance(rec.get("at"), (int, float))
            for host, rec in records.items()):
        raise StateError(f"{path} is not a map of host to {{by, why, at}}; fix or remove it")
    return records


def write(dir_fd: int, records: dict) -> None:
    """Replace drained.json with `records`: a new file made with O_EXCL here, fsynced, renamed over it."""
    data = json.dumps(records, indent=1, sort_keys=True).encode("utf-8")
    while True:
        tmp = f".{FILE}.{secrets.token_hex(8)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640,
                         dir_fd=dir_fd)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, FILE, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.fsync(dir_fd)


def apply(op: str, state_dir: str, payload: dict) -> dict:
    """Run one operation under the lock; returns what the program prints."""
    if op not in OPS:
        raise StateError(f"unknown operation {op!r} (one of {', '.join(OPS)})")
    if not isinstance(payload, dict):
        raise StateError("the request must be a JSON object")
    host = _text(payload, "host", MAX_HOST, empty=False) if op != "list" else ""
    dir_fd = _open_dir(state_dir)
    try:
        guard = _open_guard(dir_fd, state_dir)
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)
            records = read(dir_fd, state_dir)
            now = time.time()
            cleared = False
            if op == "record":
                records[host] = {"by": _text(payload, "by", MAX_TEXT), "why": _text(payload, "why", MAX_TEXT),
                                 "at": now}
                write(dir_fd, records)
            elif op == "clear" and host in records:
                del records[host]
                write(dir_fd, records)
                cleared = True
            return {"now": now, "drained": records, "cleared": cleared}
        finally:
            os.close(guard)     # releases the flock
    finally:
        os.close(dir_fd)


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print("usage: rotation_state.py record|clear|list STATE_DIR PAYLOAD-JSON", file=sys.stderr)
        return 2

    def work() -> str:
        try:
            payload = json.loads(argv[3])
        except ValueError:
            raise StateError("the request is not valid JSON") from None
        return json.dumps(apply(argv[1], argv[2], payload))

    return answer(work, StateError, os_errors=False)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
