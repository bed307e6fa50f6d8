"""The audit log: one record per change (deploy, rollback, restart, drain, failover, run, seed, ...).

The evidence is the lock host's log, /var/log/roadie/audit.log, which only root can write. Records go
in through one root helper (roles/common/files/roadie_audit.py, installed as /usr/local/sbin/roadie-audit)
that the deploy user runs with exactly `sudo -n /usr/local/sbin/roadie-audit append`. The helper adds
what the caller cannot claim: the host's clock, SUDO_USER, the SHA256 fingerprint of the key sshd
accepted for this session, a sequence number and `prev`, the sha256 of the line before (a hash chain).
`who` and `ts` stay what the operator's machine says.

The operator's machine keeps a copy of each line it recorded (logs/audit.log). `fab audit` checks the
fleet's chain and, against that copy, the records made from here: an edited last record or a cut
tail, which a chain alone cannot show.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from roadie.change import lock
from roadie.core.errors import RoadieError
from roadie.core.paths import ROOT

if TYPE_CHECKING:
    from roadie.core.ssh import HostConnection

LOCAL_LOG = ROOT / "logs" / "audit.log"
HELPER = "/usr/local/sbin/roadie-audit"            # roles/common/tasks/audit.yml installs it
LOG_PATH = "/var/log/roadie/audit.log"             # the helper's LOG_DIR and LOG_NAME
APPEND_COMMAND = f"sudo -n {HELPER} append"        # the exact line the deploy user's sudoers entry allows
MAX_RECORD = 64 * 1024                             # the helper refuses more
GENESIS = hashlib.sha256(b"").hexdigest()


def event(action: str, *, result: str, release: str = "", hosts: list[str] | tuple[str, ...] = (),
          duration_s: float | None = None, **extra: object) -> dict:
    """An audit record: who (as claimed), when, what, on which hosts, with what result."""
    record = {"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "who": lock.who(), "action": action,
              "release": release, "hosts": list(hosts), "result": result}
    if duration_s is not None:
        record["duration_s"] = round(duration_s, 1)
    record.update(extra)
    return record


def _host(conn: HostConnection) -> str:
    host = getattr(conn, "inventory_host", None)
    return host.name if host else str(getattr(conn, "host", "lock host"))


def _keep_locally(line: str, local: Path) -> None:
    local.parent.mkdir(parents=True, exist_ok=True)
    with open(local, "a") as handle:
        handle.write(line + "\n")


def record(conn: HostConnection, entry: dict, local: Path | None = None) -> dict:
    """Append `entry` to the lock host's audit log through the root helper; returns the record written.

    `conn` is the lock host's connection (the first balancer). The line the helper wrote is kept in
    `local` too. When the helper refuses, the entry is kept locally with the reason and the call fails.
    """
    if conn is None:
        raise RoadieError("an audit record needs the lock host's connection")
    local = local or LOCAL_LOG
    payload = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    if len(payload.encode()) > MAX_RECORD:
        raise RoadieError(f"audit record for {entry.get('action')} is over {MAX_RECORD} bytes; nothing recorded")
    result = conn.run(APPEND_COMMAND, hide=True, warn=True, in_stream=io.StringIO(payload), timeout=120)
    lines = result.stdout.strip().splitlines()
    written = None
    if result.exited == 0 and lines:
        try:
            written = json.loads(lines[-1])
        except json.JSONDecodeError:
            written = None
    if not isinstance(written, dict) or "prev" not in written:
        detail = (result.stderr.strip().splitlines() or result.stdout.strip().splitlines() or ["no output"])[-1]
        if "password is required" in detail or "not allowed" in detail:
            detail += f" (the deploy user needs the sudo rule `{HELPER} append` there: run the common role)"
        _keep_locally(json.dumps({**entry, "not_recorded_on": _host(conn), "error_recording": detail},
                                 sort_keys=True, separators=(",", ":")), local)
        raise RoadieError(f"{_host(conn)}: could not append to the audit log {LOG_PATH}: {detail}")
    _keep_locally(lines[-1], local)
    return written


def fetch(conn: HostConnection) -> list[str]:
    """Every line of the lock host's audit log (world-readable: the deploy user reads it without sudo)."""
    result = conn.run(f"if [ -e {LOG_PATH} ]; then cat -- {LOG_PATH}; fi", hide=True, warn=True, in_stream=False,
                      timeout=300)
    if result.exited != 0:
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RoadieError(f"{_host(conn)}: could not read the audit log {LOG_PATH}: {detail}")
    return result.stdout.splitlines()


def local_lines(local: Path | None = None) -> list[str]:
    """The lines this machine recorded (none when it never did)."""
    try:
        return (local or LOCAL_LOG).read_text().splitlines()
    except FileNotFoundError:
        return []


def line_hash(line: str) -> str:
    """sha256 of a log line without its newline: the next record's `prev`."""
    return hashlib.sha256(line.encode()).hexdigest()


@dataclass
class Break:
    """The first record that shows the log was changed after it was written."""

    line: int           # 1-based line number in the fleet's log
    record: dict | None
    reason: str

    def describe(self, host: str = "the lock host") -> str:
        """One line: where the log is broken, which record that is, and how."""
        r = self.record or {}
        facts = [f"record {r['seq']}" if "seq" in r else "", r.get("host_ts") or r.get("ts") or "",
                 r.get("action") or "", f"by {r['who']}" if r.get("who") else ""]
        what = " ".join(str(f) for f in facts if f)
        return f"audit log on {host} is broken at line {self.line}{f' ({what})' if what else ''}: {self.reason}"


def parse(lines: list[str]) -> list[dict]:
    """The records of a log; a line that is not a JSON object becomes {"unparsed": line}."""
    records = []
    for line in lines:
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            value = None
        records.append(value if isinstance(value, dict) else {"unparsed": line})
    return records


def check_chain(lines: list[str]) -> Break | None:
    """The first record that breaks the hash chain (edited, deleted or inserted), or None when it holds.

    A link breaks between two lines when the second's `prev` is not the first's hash, or its `seq` is
    not the next number. Which line is to blame follows from its neighbours: an edited line breaks only
    the link after it, an inserted one the links on both sides while its successor still chains to its
    predecessor, a deletion leaves a gap in `seq`.
    """
    records = parse(lines)
    hashes = [line_hash(line) for line in lines]

    def prev_of(i: int) -> str:
        return GENESIS if i == 0 else hashes[i - 1]

    for i, rec in enumerate(records):
        if "unparsed" in rec or not isinstance(rec.get("seq"), int) or isinstance(rec.get("seq"), bool):
            return Break(i + 1, None, "not a record (edited, or written by something other than roadie-audit)")
        want_seq = 1 if i == 0 else records[i - 1]["seq"] + 1
        nxt = records[i + 1] if i + 1 < len(records) else None
        if rec["seq"] > want_seq:
            gap = f"record {want_seq}" if rec["seq"] == want_seq + 1 else f"records {want_seq}-{rec['seq'] - 1}"
            return Break(i + 1, rec, f"{gap} deleted before it (it is number {rec['seq']})")
        if rec["seq"] < want_seq:
            if i >= 1 and rec.get("prev") == prev_of(i - 1):
                return Break(i, records[i - 1], f"inserted (record {i + 1} chains to the line before it)")
            return Break(i + 1, rec, f"inserted (it says number {rec['seq']}, after number {want_seq - 1})")
        if rec.get("prev") == prev_of(i):
            continue
        if nxt is not None and nxt.get("prev") == prev_of(i):
            return Break(i + 1, rec, f"inserted (record {i + 2} chains to the line before it)")
        if i == 0 or (nxt is not None and nxt.get("prev") != hashes[i]):
            return Break(i + 1, rec, "edited (its prev does not match the line before it)")
        return Break(i, records[i - 1], f"edited (record {i + 1}'s prev is not the hash of this line)")
    return None


def check_against_local(lines: list[str], local: list[str]) -> Break | None:
    """A record this machine wrote that the fleet's log no longer has as written.

    A local line belongs to this log when its `prev` is the hash of the log's line before its place
    (`seq`); lines recorded against another log (another inventory, a rebuilt lab) never match and are
    skipped, as are first records, whose `prev` every log shares.
    """
    for rec, line in zip(parse(local), local, strict=True):
        seq = rec.get("seq")
        if not isinstance(seq, int) or seq < 2 or seq - 2 >= len(lines) or rec.get("prev") != line_hash(lines[seq - 2]):
            continue
        if seq - 1 >= len(lines):
            return Break(seq, rec, f"missing: recorded from here ({LOCAL_LOG.name}), the log ends before it")
        if lines[seq - 1] != line:
            return Break(seq, parse([lines[seq - 1]])[0],
                         f"edited: differs from the line recorded from here ({LOCAL_LOG.name})")
    return None


def verify(lines: list[str], local: list[str] = ()) -> Break | None:
    """The first sign of tampering in the fleet's log (its chain, then this machine's copy), or None."""
    return check_chain(lines) or check_against_local(lines, list(local))


DETAIL_KEYS = ("error", "command", "message", "backup", "previous_owner", "failed")


def detail(rec: dict) -> str:
    """The one column of `fab audit` that says what else the record holds."""
    parts = []
    for key in DETAIL_KEYS:
        value = rec.get(key)
        if value not in (None, "", []):
            parts.append(f"{key}={value if isinstance(value, str) else json.dumps(value)}")
    return " ".join(parts)


@dataclass
class Review:
    """What `fab audit` shows: the last records, how many there are, and the first break if any."""

    host: str
    total: int
    records: list[dict]
    broken: Break | None


def review(conn: HostConnection, last: int, local: Path | None = None) -> Review:
    """Read the lock host's whole log, check it, and keep the last `last` records to show."""
    if last < 1:
        raise RoadieError(f"--last must be at least 1, got {last}")
    lines = fetch(conn)
    return Review(_host(conn), len(lines), parse(lines)[-last:], verify(lines, local_lines(local)))


HEADERS = ("#", "host time", "who", "sudo", "ssh key", "from", "action", "release", "result", "s", "detail")


def table_rows(records: list[dict]) -> list[tuple]:
    """One row per record for `fab audit`; the key is the fingerprint sshd saw, '-' when unknown."""
    return [(r.get("seq", "?"), r.get("host_ts") or r.get("ts", ""), r.get("who", ""), r.get("sudo_user") or "-",
             r.get("ssh_key") or "-", r.get("ssh_from") or "-", r.get("action", ""), r.get("release", ""),
             r.get("result", ""), r.get("duration_s", ""), detail(r) or r.get("unparsed", ""))
            for r in records]
