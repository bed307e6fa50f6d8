"""PostgreSQL operations: on-demand base backups, restore checks, replication state and failover.

The hosts come from the inventory groups database_primary (one) and database_replica. Everything runs
over the verified SSH connections (roadie/ssh.py) with the tools the postgresql role installs:
pg-base-backup.service, /usr/local/sbin/pg-restore-check, psql as postgres. SQL goes to psql on stdin,
never on a command line; nothing printed here carries a password.

Failover: plan -> deploy lock -> lag check -> stop the old primary (fast shutdown: its walsender ships
the last WAL first) and fence it (unit masked, marker file) -> wait until the replica has replayed the
old primary's shutdown checkpoint -> pg_promote -> rewrite the database host order in every stream host's
env file (new primary first) -> rolling restart through the drain path -> audit line -> the inventory
change the operator commits.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from roadie import contract, deploy, lock, remote, ssh, stream_host
from roadie.change import Change
from roadie.errors import RoadieError
from roadie.inventory import Host, Inventory

if TYPE_CHECKING:
    from roadie.ssh import HostConnection

BACKUP_DIR = contract.PG_BACKUP_DIR
BASE_DIR = contract.PG_BASE_BACKUP_DIR
WAL_DIR = contract.PG_WAL_ARCHIVE_DIR
COPY_DIR = "/var/lib/postgresql/restore-copy"       # on the checking host; removed after each check
RESTORE_CHECK = "/usr/local/sbin/pg-restore-check"
BACKUP_SERVICE = "pg-base-backup.service"
PG_UNIT = contract.PG_UNIT
PG_BIN = contract.PG_BIN
DATA_DIR = contract.PG_DATA_DIR
FENCE_FILE = contract.PG_FENCE_FILE   # the deploy user's state directory (common role)
LIST_BACKUPS_PROGRAM = "list_backups.py"   # roadie/remote/: the complete base backups on a host
FENCE_PROGRAM = "fence_marker.py"          # roadie/remote/: writes the fence marker
# Database work runs as postgres (the deploy user's sudo allows that account on database hosts, never
# root); the few root actions are the exact `systemctl` lines of the common role's sudo list.
AS_POSTGRES = "sudo -n -u postgres "
WAL_SEGMENT_SIZE = 16 * 1024 * 1024
DEFAULT_MAX_LAG = 16 * 1024 * 1024
_BACKUP_NAME = re.compile(r"[0-9]{8}T[0-9]{6}Z")
_SEGMENT = re.compile(r"[0-9A-F]{24}")
_LSN = re.compile(r"[0-9A-F]{1,8}/[0-9A-F]{1,8}")

Report = Callable[..., None]


# ------------------------------------------------------------------ pure helpers (unit-tested)
def parse_lsn(text: str) -> int:
    """A PostgreSQL LSN like 0/3000148 as a byte position."""
    text = (text or "").strip().upper()
    if not _LSN.fullmatch(text):
        raise RoadieError(f"not a WAL position: {text!r}")
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def format_lsn(position: int) -> str:
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


def segment_name(timeline: int, position: int, segment_size: int = WAL_SEGMENT_SIZE) -> str:
    """The WAL file name holding byte `position` on `timeline` (as pg_walfile_name would name it)."""
    segno = position // segment_size
    per_id = 0x100000000 // segment_size
    return f"{timeline:08X}{segno // per_id:08X}{segno % per_id:08X}"


def wal_needed(start_wal: str, restore_lsn: str, archived: list[str]) -> list[str]:
    """Archived files a restore of a backup starting at `start_wal` needs to reach `restore_lsn`:
    every segment of the timeline from start_wal to the one holding the restore point, plus history
    files. RoadieError naming the first missing segment."""
    if not _SEGMENT.fullmatch(start_wal):
        raise RoadieError(f"bad first WAL segment {start_wal!r} in the backup's roadie-backup.json")
    timeline = int(start_wal[:8], 16)
    first = int(start_wal[8:16], 16) * (0x100000000 // WAL_SEGMENT_SIZE) + int(start_wal[16:], 16)
    # pg_create_restore_point returns the end of its record; the record itself ends in the segment before
    # a segment boundary.
    last_name = segment_name(timeline, parse_lsn(restore_lsn) - 1)
    last = int(last_name[8:16], 16) * (0x100000000 // WAL_SEGMENT_SIZE) + int(last_name[16:], 16)
    if last < first:
        raise RoadieError(f"restore point {restore_lsn} lies before the backup's first segment {start_wal}")
    present = set(archived)
    needed = []
    per_id = 0x100000000 // WAL_SEGMENT_SIZE
    for segno in range(first, last + 1):
        name = f"{timeline:08X}{segno // per_id:08X}{segno % per_id:08X}"
        if name not in present:
            raise RoadieError(f"WAL segment {name} is missing from the primary's archive {WAL_DIR}")
        needed.append(name)
    needed += sorted(n for n in present if n.endswith(".history"))
    return needed


def compare_tables(reference: dict, restored: dict) -> list[str]:
    """Mismatches between the reference recorded at backup time and the restored tables, one line each."""
    problems = []
    for table, want in sorted(reference.items()):
        got = restored.get(table)
        if got is None:
            problems.append(f"table {table}: missing from the restored database")
            continue
        if int(got["rows"]) != int(want["rows"]):
            problems.append(f"table {table}: {got['rows']} rows restored, {want['rows']} recorded at backup time")
        elif str(got["checksum"]) != str(want["checksum"]):
            problems.append(f"table {table}: checksum {got['checksum']} restored, {want['checksum']} recorded")
    problems += [f"table {t}: restored but not in the reference" for t in sorted(set(restored) - set(reference))]
    return problems


def check_max_lag(value: object) -> int:
    """--max-lag as a whole number of bytes >= 0."""
    try:
        lag = int(str(value))
    except ValueError:
        raise RoadieError(f"--max-lag must be a whole number of bytes, got {value!r}") from None
    if lag < 0:
        raise RoadieError(f"--max-lag must be >= 0, got {lag}")
    return lag


def lag_verdict(lag_bytes: int | None, max_lag: int, force: bool) -> str:
    """Why the failover may go on ("" when the lag is within the threshold); RoadieError when it may not."""
    if lag_bytes is None:
        if not force:
            raise RoadieError("replication lag cannot be read (is the old primary down?); "
                              "a failover now may lose writes: pass --force to go on anyway")
        return "replication lag unknown; going on because of --force"
    if lag_bytes > max_lag:
        if not force:
            raise RoadieError(f"replication lag {lag_bytes} bytes is above --max-lag {max_lag}; "
                              "wait for the replica to catch up, or pass --force")
        return f"replication lag {lag_bytes} bytes is above --max-lag {max_lag}; going on because of --force"
    return ""


# ------------------------------------------------------------------ topology and remote helpers
@dataclass(frozen=True)
class Topology:
    """The database hosts as the inventory names them."""

    primary: Host
    replicas: tuple[Host, ...]

    @property
    def hosts(self) -> list[Host]:
        return [self.primary, *self.replicas]


def topology(inv: Inventory) -> Topology:
    primaries = inv.groups.get("database_primary") or ()
    if len(primaries) != 1:
        raise RoadieError(f"inventory {inv.name} must have exactly one host in database_primary, "
                          f"has {len(primaries)}")
    replicas = tuple(inv.hosts[n] for n in inv.groups.get("database_replica") or ())
    return Topology(inv.hosts[primaries[0]], replicas)


def _name(conn: HostConnection) -> str:
    return stream_host.host_name(conn)


def _run(conn: HostConnection, command: str, *, what: str, timeout: int | None = 600, stdin: str | None = None):
    result = conn.run(command, hide=True, warn=True, timeout=timeout,
                      in_stream=io.StringIO(stdin) if stdin is not None else False)
    if result.exited != 0:
        lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise RoadieError(f"{_name(conn)}: {what} failed: {lines[-1] if lines else f'exit {result.exited}'}")
    return result


def psql(conn: HostConnection, sql: str, database: str = "postgres", *, what: str = "query") -> str:
    """Run SQL (on stdin) as postgres over the local socket; the unaligned, tuples-only output."""
    cmd = f"cd / && {AS_POSTGRES}psql -X -A -t -q -v ON_ERROR_STOP=1 -d {shlex.quote(database)}"
    return _run(conn, cmd, what=what, stdin=sql, timeout=120).stdout.strip()


def _json(conn: HostConnection, sql: str, what: str) -> dict:
    out = psql(conn, sql, what=what)
    try:
        return json.loads(out.splitlines()[-1])
    except (ValueError, IndexError):
        raise RoadieError(f"{_name(conn)}: {what}: unexpected answer {out[-200:]!r}") from None


# ------------------------------------------------------------------ backups
@dataclass
class Backup:
    """One base backup on the primary."""

    name: str
    size_bytes: int
    started_at: str
    finished_at: str
    start_wal: str
    age_s: float
    has_reference: bool
    sha256: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def list_backups(conn: HostConnection) -> list[Backup]:
    """The complete base backups on a host, oldest first."""
    out = _run(conn, AS_POSTGRES + remote.command(LIST_BACKUPS_PROGRAM, BASE_DIR), what="listing base backups",
               timeout=60)
    return [Backup(**b) for b in json.loads(out.stdout.strip().splitlines()[-1])]


@dataclass
class BackupResult:
    backup: Backup
    duration_s: float


def backup(inv: Inventory, report: Report) -> BackupResult:
    """Take a base backup on the primary now, with the role's own service (the same as the timer's)."""
    primary = topology(inv).primary
    conn = ssh.connect(primary)
    try:
        if _is_in_recovery(conn):
            raise RoadieError(f"{primary.name} is in recovery (a replica): is database_primary up to date?")
        before = {b.name for b in list_backups(conn)}
        report(f"starting {BACKUP_SERVICE}", primary.name)
        started = time.monotonic()
        result = conn.run(f"sudo -n systemctl start {BACKUP_SERVICE}", hide=True, warn=True, in_stream=False,
                          timeout=3600)
        duration = time.monotonic() - started
        if result.exited != 0:
            journal = conn.run(f"journalctl -u {BACKUP_SERVICE} -n 3 --no-pager -o cat", hide=True,
                               warn=True, in_stream=False).stdout.strip().splitlines()
            raise RoadieError(f"{primary.name}: base backup failed: {journal[-1] if journal else 'see the journal'}")
        new = [b for b in list_backups(conn) if b.name not in before]
        if not new:
            raise RoadieError(f"{primary.name}: {BACKUP_SERVICE} succeeded but wrote no new backup")
        return BackupResult(new[-1], duration)
    finally:
        conn.close()


def _is_in_recovery(conn: HostConnection) -> bool:
    return psql(conn, "SELECT pg_is_in_recovery()", what="reading the server role") == "t"


# ------------------------------------------------------------------ restore check
@dataclass
class RestoreCheck:
    backup: str
    host: str
    ok: bool
    problems: list[str]
    tables: dict
    reference: dict
    restore_s: float
    copy_bytes: int
    copy_s: float
    duration_s: float

    def as_dict(self) -> dict:
        return asdict(self)


def _read_remote(conn: HostConnection, path: str, what: str) -> str:
    return _run(conn, f"{AS_POSTGRES}cat {shlex.quote(path)}", what=what, timeout=60).stdout


def _sha256s(conn: HostConnection, directory: str, names: list[str]) -> dict[str, str]:
    if not names:
        return {}
    prefix = directory.rstrip("/") + "/"
    files = " ".join(shlex.quote(prefix + n) for n in names)
    out = _run(conn, f"{AS_POSTGRES}sha256sum -- {files}", what="checksumming files", timeout=1800).stdout
    sums = {}
    for line in out.splitlines():
        digest, _, name = line.partition("  ")
        sums[name.strip().removeprefix(prefix)] = digest.strip()
    return sums


def _stream_tar(src: HostConnection, src_dir: str, names: list[str], dst: HostConnection, dst_dir: str) -> int:
    """tar the files on `src` and unpack them on `dst`, through this controller; bytes moved."""
    src_chan = src.client.get_transport().open_session()
    dst_chan = dst.client.get_transport().open_session()
    files = " ".join(shlex.quote(n) for n in names)
    src_chan.exec_command(f"{AS_POSTGRES}tar -C {shlex.quote(src_dir)} -cf - -- {files}")
    dst_chan.exec_command(f"{AS_POSTGRES}tar -C {shlex.quote(dst_dir)} --no-same-owner -xf -")
    moved = 0
    src_err: list[bytes] = []

    def drain_stderr() -> None:
        while True:
            data = src_chan.recv_stderr(65536)
            if not data:
                return
            src_err.append(data)

    reader = threading.Thread(target=drain_stderr, daemon=True)
    reader.start()
    while True:
        data = src_chan.recv(1 << 20)
        if not data:
            break
        dst_chan.sendall(data)
        moved += len(data)
    dst_chan.shutdown_write()
    src_status = src_chan.recv_exit_status()
    dst_status = dst_chan.recv_exit_status()
    reader.join(10)
    dst_err = b""
    while dst_chan.recv_stderr_ready():
        dst_err += dst_chan.recv_stderr(65536)
    src_chan.close()
    dst_chan.close()
    if src_status != 0:
        detail = b"".join(src_err).decode(errors="replace").strip().splitlines()[-1:] or [f"exit {src_status}"]
        raise RoadieError(f"{_name(src)}: reading the backup files failed: {detail[0]}")
    if dst_status != 0:
        detail = dst_err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {dst_status}"]
        raise RoadieError(f"{_name(dst)}: writing the copy failed: {detail[0]}")
    return moved


def restore_target(inv: Inventory, backup_name: str | None = None, on: str | None = None) -> Host:
    """The host a restore check runs on, with the arguments checked; touches no host."""
    if backup_name is not None and not _BACKUP_NAME.fullmatch(backup_name):
        raise RoadieError(f"--backup must be a backup name like 20260102T023000Z, got {backup_name!r}")
    topo = topology(inv)
    if on is None:
        if not topo.replicas:
            raise RoadieError("no host in database_replica to restore on; name one with --on")
        target = topo.replicas[0]
    else:
        if on not in inv.hosts:
            raise RoadieError(f"--on {on!r} is not a host of inventory {inv.name}")
        target = inv.hosts[on]
        if target.name == topo.primary.name:
            raise RoadieError(f"--on {on}: the check restores on another host than the primary")
    return target


def restore_check(inv: Inventory, report: Report, backup_name: str | None = None, on: str | None = None,
                  timeout: int = 3600) -> RestoreCheck:
    """Copy a backup and the WAL it needs to another host, restore it there to its recorded restore point,
    and compare every key table with the reference recorded at backup time."""
    target = restore_target(inv, backup_name, on)
    topo = topology(inv)
    started = time.monotonic()
    src = ssh.connect(topo.primary)
    dst = ssh.connect(target)
    copy = f"{COPY_DIR}/{backup_name or 'latest'}"
    try:
        _run(dst, f"test -x {RESTORE_CHECK}", what=f"looking for {RESTORE_CHECK} (is the postgresql role applied?)")
        backups = list_backups(src)
        if not backups:
            raise RoadieError(f"{topo.primary.name}: no base backup in {BASE_DIR} (take one: fab db.backup)")
        if backup_name is None:
            chosen = backups[-1]
        else:
            chosen = next((b for b in backups if b.name == backup_name), None)
            if chosen is None:
                raise RoadieError(f"{topo.primary.name}: no backup {backup_name} "
                                  f"(have: {', '.join(b.name for b in backups[-5:])})")
        if not chosen.has_reference:
            raise RoadieError(f"backup {chosen.name} has no roadie-reference.json (taken before references were "
                              "recorded); take a new one: fab db.backup")
        copy = f"{COPY_DIR}/{chosen.name}"
        src_dir = f"{BASE_DIR}/{chosen.name}"
        reference = json.loads(_read_remote(src, f"{src_dir}/roadie-reference.json", "reading the reference"))
        # Files as recorded at backup time: a changed byte since then is named here, before any restore.
        files = [n for n in ("base.tar.gz", "pg_wal.tar.gz", "backup_manifest") if n in chosen.sha256] or \
            ["base.tar.gz", "pg_wal.tar.gz", "backup_manifest"]
        if chosen.sha256:
            now = _sha256s(src, src_dir, files)
            for name in files:
                if now.get(name) != chosen.sha256[name]:
                    raise RoadieError(f"backup {chosen.name}: {name} on {topo.primary.name} does not match the "
                                      "sha256 recorded at backup time (damaged)")
        archived = _run(src, f"{AS_POSTGRES}ls -1 {WAL_DIR}", what="listing the WAL archive", timeout=60).stdout.split()
        wal = wal_needed(chosen.start_wal, reference["restore_lsn"], archived)
        report(f"copying backup {chosen.name} ({chosen.size_bytes} bytes) and {len(wal)} WAL files "
               f"to {target.name}", topo.primary.name)
        meta = [*files, "roadie-backup.json", "roadie-reference.json"]
        _run(dst, f"{AS_POSTGRES}rm -rf {shlex.quote(copy)} && {AS_POSTGRES}install -d -m 0700 "
                  f"{shlex.quote(COPY_DIR)} {shlex.quote(copy)} {shlex.quote(copy + '/wal')}",
             what="creating the copy directory")
        copy_started = time.monotonic()
        moved = _stream_tar(src, src_dir, meta, dst, copy)
        moved += _stream_tar(src, WAL_DIR, wal, dst, copy + "/wal")
        copy_s = time.monotonic() - copy_started
        want = {**_sha256s(src, src_dir, meta), **{f"wal/{k}": v for k, v in _sha256s(src, WAL_DIR, wal).items()}}
        got = _sha256s(dst, copy, [*meta, *(f"wal/{n}" for n in wal)])
        for name, digest in want.items():
            if got.get(name) != digest:
                raise RoadieError(f"copy of {name} on {target.name} differs from {topo.primary.name}'s")
        report(f"restoring {chosen.name} up to restore point {reference['restore_point']}", target.name)
        result = dst.run(f"{AS_POSTGRES}{RESTORE_CHECK} -b {shlex.quote(copy)} -w {shlex.quote(copy + '/wal')} -r -j "
                         f"-t {int(timeout)}", hide=True, warn=True, in_stream=False, timeout=timeout + 120)
        if result.exited != 0:
            lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
            raise RoadieError(f"backup {chosen.name}: restore on {target.name} failed: "
                              f"{lines[-1] if lines else f'exit {result.exited}'}")
        restored = json.loads(result.stdout.strip().splitlines()[-1])
        problems = compare_tables(reference["tables"], restored["tables"])
        return RestoreCheck(chosen.name, target.name, not problems, problems, restored["tables"], reference["tables"],
                            float(restored.get("restore_seconds", 0)), moved, copy_s, time.monotonic() - started)
    finally:
        dst.run(f"{AS_POSTGRES}rm -rf {shlex.quote(copy)}", hide=True, warn=True, in_stream=False)
        src.close()
        dst.close()


# ------------------------------------------------------------------ replication state
@dataclass
class NodeState:
    """One database host's replication state."""

    host: str
    reachable: bool
    role: str = "unknown"                  # primary, replica, down, unknown
    current_lsn: str | None = None         # primary: pg_current_wal_lsn; replica: last received
    replay_lsn: str | None = None          # replica: last replayed
    sent_lsn: str | None = None            # replica: what the primary's walsender sent it
    lag_bytes: int | None = None           # replica: primary's current position - this replay position
    lag_s: float | None = None
    state: str = ""                        # walsender state seen from the primary (streaming, catchup...)
    slots: list[dict] = field(default_factory=list)
    error: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


_STATE_SQL = """
SELECT json_build_object(
  'in_recovery', pg_is_in_recovery(),
  'current_lsn', CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn()::text
                      ELSE pg_current_wal_lsn()::text END,
  'replay_lsn', pg_last_wal_replay_lsn()::text,
  'replay_age_s', extract(epoch FROM now() - pg_last_xact_replay_timestamp()),
  'senders', (SELECT coalesce(json_agg(json_build_object(
                 'name', application_name, 'addr', client_addr::text, 'state', state,
                 'sent_lsn', sent_lsn::text, 'replay_lsn', replay_lsn::text,
                 'lag_bytes', CASE WHEN pg_is_in_recovery() THEN NULL
                                   ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint END,
                 'replay_lag_s', extract(epoch FROM replay_lag))), '[]') FROM pg_stat_replication),
  'slots', (SELECT coalesce(json_agg(json_build_object(
                 'slot', slot_name, 'active', active, 'restart_lsn', restart_lsn::text,
                 'retained_bytes', CASE WHEN pg_is_in_recovery() OR restart_lsn IS NULL THEN NULL
                                        ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint END,
                 'wal_status', wal_status)), '[]') FROM pg_replication_slots))
"""


def _probe(host: Host) -> tuple[Host, dict | None, str]:
    try:
        conn = ssh.connect(host)
    except RoadieError as exc:
        return host, None, str(exc)
    try:
        return host, _json(conn, _STATE_SQL, "reading replication state"), ""
    except Exception as exc:  # a host that drops the session mid-read is a row, not a traceback
        return host, None, ssh.describe_failure(host, exc)
    finally:
        conn.close()


def build_states(topo: Topology, raw: dict[str, tuple[dict | None, str]]) -> list[NodeState]:
    """Rows for each database host from what each answered (pure: unit-tested)."""
    states: list[NodeState] = []
    primary_data = next((d for d, _ in raw.values() if d and not d["in_recovery"]), None)
    senders = {s["addr"]: s for s in (primary_data or {}).get("senders", [])}
    senders_by_name = {s["name"]: s for s in (primary_data or {}).get("senders", [])}
    for host in topo.hosts:
        data, error = raw.get(host.name, (None, "not probed"))
        if data is None:
            states.append(NodeState(host.name, False, "down", error=error))
            continue
        node = NodeState(host.name, True, "replica" if data["in_recovery"] else "primary",
                         current_lsn=data["current_lsn"], slots=data["slots"] or [])
        if data["in_recovery"]:
            node.replay_lsn = data["replay_lsn"]
            sender = senders.get(host.address) or senders_by_name.get(_slot_name(host.name))
            if sender is not None:
                node.sent_lsn, node.state = sender["sent_lsn"], sender["state"]
                node.lag_bytes = sender["lag_bytes"]
                if node.lag_bytes == 0:
                    node.lag_s = 0.0
                elif sender["replay_lag_s"] is not None:
                    node.lag_s = round(float(sender["replay_lag_s"]), 3)
            elif primary_data is not None and data["replay_lsn"]:
                node.lag_bytes = max(0, parse_lsn(primary_data["current_lsn"]) - parse_lsn(data["replay_lsn"]))
                node.state = "not streaming"
            if node.lag_s is None and node.lag_bytes and data["replay_age_s"] is not None:
                node.lag_s = round(float(data["replay_age_s"]), 3)
        states.append(node)
    return states


def _slot_name(host: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", host.split(".")[0].lower())


def replication(inv: Inventory) -> list[NodeState]:
    """Each database host's role, WAL positions, lag and slots, read in parallel."""
    topo = topology(inv)
    raw = {h.name: (d, e) for h, d, e in ssh.parallel(_probe, topo.hosts)}
    return build_states(topo, raw)


# ------------------------------------------------------------------ failover
@dataclass
class FailoverPlan:
    old_primary: str
    new_primary: str
    new_primary_address: str
    stream_hosts: list[str]
    max_lag: int
    force: bool
    old_primary_address: str = ""

    def describe(self) -> list[str]:
        return [
            f"failover: promote {self.new_primary} ({self.new_primary_address}); fence {self.old_primary}",
            f"  1. refuse if {self.new_primary}'s replication lag is above {self.max_lag} bytes or unknown"
            + (" (--force: go on anyway)" if self.force else ""),
            f"  2. stop PostgreSQL on {self.old_primary} (fast shutdown), mask its unit, write {FENCE_FILE}",
            f"  3. wait until {self.new_primary} has replayed everything {self.old_primary} wrote; pg_promote",
            f"  4. put {self.new_primary} first in STREAM_DATABASE_URL on {', '.join(self.stream_hosts)} and "
            f"remove {self.old_primary} from it; rolling restart through the drain path",
            "  5. audit line; print the inventory change to commit",
        ]


def plan_failover(inv: Inventory, max_lag: object = DEFAULT_MAX_LAG, force: bool = False,
                  to: str | None = None) -> FailoverPlan:
    """What a failover will do, checked against the inventory before any host is touched."""
    lag = check_max_lag(max_lag)
    topo = topology(inv)
    if not topo.replicas:
        raise RoadieError("database_replica is empty: there is no replica to promote")
    if to is None:
        new = topo.replicas[0]
    else:
        new = next((r for r in topo.replicas if r.name == to), None)
        if new is None:
            raise RoadieError(f"--to {to!r} is not in database_replica "
                              f"({', '.join(r.name for r in topo.replicas)})")
    address = str(inv.host_var(new.name, "roadie_private_address"))
    stream = [h.name for h in inv.group("stream")]
    old_address = str(inv.host_var(topo.primary.name, "roadie_private_address"))
    return FailoverPlan(topo.primary.name, new.name, address, stream, lag, force, old_address)


def repoint_stream_host(conn: HostConnection, address: str, port: int = 5432) -> bool:
    """Put `address` first among the database hosts of the host's env file; True if it changed.

    Through the streaming role's checked wrapper (`stream-task use-database`), which only reorders the
    hosts already listed (atomic rename, same owner and mode): the deploy user cannot point the service
    anywhere else. The port stays as the file has it.
    """
    out = _run(conn, f"sudo -n {stream_host.TASK_WRAPPER} use-database {shlex.quote(address)}",
               what="pointing the env file at the new primary", timeout=60)
    return json.loads(out.stdout.strip().splitlines()[-1])["changed"]


def forget_old_primary(conn: HostConnection, address: str) -> bool:
    """Remove a failed-over primary from the host's env file (never its last database host), so that no
    blip on the new primary sends writes back to it; True if it changed. Provisioning, after the
    inventory names the new roles, writes the list again."""
    out = _run(conn, f"sudo -n {stream_host.TASK_WRAPPER} forget-database {shlex.quote(address)}",
               what="removing the old primary from the env file", timeout=60)
    return json.loads(out.stdout.strip().splitlines()[-1])["changed"]


@dataclass
class FailoverResult:
    plan: FailoverPlan
    old_primary_fenced: bool
    old_final_lsn: str | None
    promoted_at_lsn: str
    duration_s: float
    timings: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def fence_host(conn: HostConnection, new_primary: str, reason: str) -> None:
    """Stop PostgreSQL (fast), mask its unit and write the fence marker: the host takes no writes again
    until an operator rebuilds it as a replica."""
    _run(conn, f"sudo -n systemctl stop {PG_UNIT}", what="stopping PostgreSQL", timeout=180)
    _run(conn, f"sudo -n systemctl mask {PG_UNIT}", what="masking the PostgreSQL unit", timeout=60)
    marker = json.dumps({"fenced_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "by": lock.who(),
                         "reason": reason, "new_primary": new_primary})
    _run(conn, remote.command(FENCE_PROGRAM, FENCE_FILE, marker), what="writing the fence marker")


def _fence(conn: HostConnection, plan: FailoverPlan, report: Report) -> str:
    """Stop the old primary (fast), mask its unit, write the marker; the shutdown checkpoint's LSN."""
    fence_host(conn, plan.new_primary, "fab db.failover")
    report(f"stopped, unit masked, fenced ({FENCE_FILE})", plan.old_primary, event="fenced")
    control = _run(conn, f"{AS_POSTGRES}{PG_BIN}/pg_controldata {DATA_DIR}", what="reading pg_controldata",
                   timeout=60).stdout
    state = re.search(r"^Database cluster state:\s*(.+)$", control, re.M)
    checkpoint = re.search(r"^Latest checkpoint location:\s*([0-9A-F/]+)$", control, re.M)
    if not state or state.group(1).strip() != "shut down" or not checkpoint:
        raise RoadieError(f"{plan.old_primary}: cluster is not cleanly shut down "
                          f"({state.group(1).strip() if state else 'unknown state'}); not promoting")
    return checkpoint.group(1)


def _wait_replayed(conn: HostConnection, lsn: str, timeout: float) -> str:
    want = parse_lsn(lsn)
    deadline = time.monotonic() + timeout
    replay = "0/0"
    while time.monotonic() < deadline:
        replay = psql(conn, "SELECT pg_last_wal_replay_lsn()", what="reading the replay position") or "0/0"
        if parse_lsn(replay) >= want:
            return replay
        time.sleep(0.2)
    raise RoadieError(f"{_name(conn)}: replayed only up to {replay} of the old primary's {lsn} after "
                      f"{timeout:.0f} s; not promoting (the old primary stays fenced)")


def failover(inv: Inventory, plan: FailoverPlan, report: Report, options: deploy.Options,
             rolling_restart: Callable | None = None, wait_timeout: float = 120) -> FailoverResult:
    """Run a failover plan inside the change pipeline (lease with heartbeat, audit record, interrupts)."""
    from roadie import maintenance

    restart = rolling_restart or maintenance.rolling_restart
    started = time.monotonic()
    timings: dict[str, float] = {}
    notes: list[str] = []
    fleet = deploy.Fleet.from_inventory(inv)
    with Change(fleet.balancer, "db.failover", hosts=[plan.old_primary, plan.new_primary, *plan.stream_hosts],
                message=options.message or f"promote {plan.new_primary}", report=report) as change:
        change.detail.update(old_primary=plan.old_primary, new_primary=plan.new_primary, forced=plan.force,
                             timings=timings)
        return _failover(inv, plan, report, options, restart, wait_timeout, change, timings, notes, started)


def _failover(inv: Inventory, plan: FailoverPlan, report: Report, options: deploy.Options, restart: Callable,
              wait_timeout: float, change: Change, timings: dict[str, float], notes: list[str],
              started: float) -> FailoverResult:
    fleet = deploy.Fleet.from_inventory(inv)
    outcome = None
    new_conn = old_conn = None
    try:
        new_conn = ssh.connect(inv.hosts[plan.new_primary])
        try:
            old_conn = ssh.connect(inv.hosts[plan.old_primary])
        except RoadieError as exc:
            if not plan.force:
                raise RoadieError(f"old primary unreachable ({exc}); it cannot be fenced: pass --force to promote "
                                  f"{plan.new_primary} anyway, and keep {plan.old_primary} from starting") from None
            notes.append(f"{plan.old_primary} unreachable, NOT fenced: keep it from starting PostgreSQL again")
            report(f"unreachable, not fenced; going on because of --force: {exc}", plan.old_primary, event="warn")
        if not _is_in_recovery(new_conn):
            raise RoadieError(f"{plan.new_primary} is not a replica (not in recovery); nothing changed")
        states = {s.host: s for s in replication(inv)}
        lag = states[plan.new_primary].lag_bytes if old_conn is not None else None
        verdict = lag_verdict(lag, plan.max_lag, plan.force)
        report(verdict or f"replication lag {lag} bytes (max {plan.max_lag})", plan.new_primary, event="lag")
        final_lsn = None
        if old_conn is not None:
            t = time.monotonic()
            final_lsn = _fence(old_conn, plan, report)
            timings["stop_and_fence_s"] = round(time.monotonic() - t, 2)
            t = time.monotonic()
            replayed = _wait_replayed(new_conn, final_lsn, wait_timeout)
            timings["catch_up_s"] = round(time.monotonic() - t, 2)
            report(f"replayed up to {replayed} (old primary's shutdown checkpoint {final_lsn})", plan.new_primary,
                   event="caught_up")
        t = time.monotonic()
        promoted = psql(new_conn, "SELECT pg_promote(true, 60)", what="pg_promote")
        if promoted != "t" or _is_in_recovery(new_conn):
            raise RoadieError(f"{plan.new_primary}: pg_promote did not finish within 60 s")
        promoted_lsn = psql(new_conn, "SELECT pg_current_wal_lsn()", what="reading the new primary's position")
        timings["promote_s"] = round(time.monotonic() - t, 2)
        timings["writes_blocked_s"] = round(sum(timings.values()), 2)
        report(f"promoted at {promoted_lsn}; accepts writes", plan.new_primary, event="promoted")
        t = time.monotonic()

        def repoint(host: Host) -> tuple[str, bool]:
            conn = ssh.connect(host)
            try:
                changed = repoint_stream_host(conn, plan.new_primary_address)
                # The old primary is no fallback: a blip on the new one must never send writes back to it.
                forgot = bool(plan.old_primary_address) and forget_old_primary(conn, plan.old_primary_address)
                return host.name, forgot or changed
            finally:
                conn.close()

        for name, changed in ssh.parallel(repoint, fleet.stream):
            report(f"STREAM_DATABASE_URL: {plan.new_primary} only, {plan.old_primary} removed"
                   + ("" if changed else " (already)"), name, event="repointed")
        outcome = restart(fleet, options, report, change=change)
        timings["repoint_and_restart_s"] = round(time.monotonic() - t, 2)
        return FailoverResult(plan, old_conn is not None, final_lsn, promoted_lsn, time.monotonic() - started,
                              timings, notes)
    finally:
        change.detail["restart_ok"] = bool(outcome and outcome.ok)
        for conn in (new_conn, old_conn):
            if conn is not None:
                conn.close()


def inventory_change(plan: FailoverPlan, inventory_name: str) -> list[str]:
    """What the operator commits after a failover, and how the old primary comes back as a replica."""
    return [
        f"inventory {inventory_name}: move {plan.new_primary} to database_primary and {plan.old_primary} to "
        "database_replica, then commit:",
        "    database_primary:",
        "      hosts:",
        f"        {plan.new_primary}:",
        "    database_replica:",
        "      hosts:",
        f"        {plan.old_primary}:",
        f"rebuild {plan.old_primary} as a replica of {plan.new_primary} (roles/postgresql/README.md, "
        "\"After a failover\"):",
        f"    ssh {plan.old_primary}: systemctl unmask {PG_UNIT}; mv {DATA_DIR} {DATA_DIR}.fenced-$(date +%s); "
        f"rm {FENCE_FILE}",
        "    ansible-playbook playbooks/database.yml   # both hosts: the primary's pg_hba learns the new replica",
        "then apply the stream tier (ansible-playbook playbooks/stream.yml) so its env files match the inventory.",
    ]


# ------------------------------------------------------------------ a failed-over primary that comes back
def stale_primary(records: list[dict], primaries: list[str]) -> dict | None:
    """The last successful failover's record when its old primary is among `primaries` again."""
    for rec in reversed(records):
        if rec.get("action") == "db.failover" and rec.get("result") == "ok":
            return rec if rec.get("old_primary") in primaries and rec.get("new_primary") in primaries else None
    return None


def fence_at_first_contact(inv: Inventory, primaries: list[str], lock_conn: HostConnection) -> str | None:
    """When two PostgreSQL hosts claim to be primary and the fleet's audit log shows one of them was failed
    over away from (a forced failover could not fence it), fence that one now, before anything else
    touches it; what was done, or None when the log does not say which one is stale."""
    from roadie import audit

    rec = stale_primary(audit.parse(audit.fetch(lock_conn)), primaries)
    if rec is None:
        return None
    old, new = rec["old_primary"], rec["new_primary"]
    with ssh.connect(inv.hosts[old]) as conn:
        fence_host(conn, new, f"fenced at first contact: failed over to {new} at {rec.get('host_ts') or rec['ts']}")
    audit.record(lock_conn, audit.event("db.fence", result="ok", hosts=[old], old_primary=old, new_primary=new,
                                        reason="a failed-over primary came back"))
    return (f"{old} was failed over to {new} at {rec.get('host_ts') or rec['ts']} but came back as a primary: "
            f"fenced it now (stopped, masked, {FENCE_FILE})")
