"""Restore checks: copy a base backup and the WAL it needs to another host, restore it there to its
recorded restore point, and compare every key table with the reference recorded at backup time."""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from roadie.core import ssh
from roadie.core.errors import RoadieError
from roadie.core.inventory import Host, Inventory
from roadie.db import client
from roadie.db.backups import BACKUP_NAME, BASE_DIR, list_backups
from roadie.db.client import AS_POSTGRES
from roadie.db.topology import Report, topology
from roadie.db.transfer import stream_tar
from roadie.db.wal import WAL_DIR, wal_needed

if TYPE_CHECKING:
    from roadie.core.ssh import HostConnection

COPY_DIR = "/var/lib/postgresql/restore-copy"       # on the checking host; removed after each check
RESTORE_CHECK = "/usr/local/sbin/pg-restore-check"


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


def _read_remote(conn: HostConnection, path: str, what: str) -> str:
    return client.run(conn, f"{AS_POSTGRES}cat {shlex.quote(path)}", what=what, timeout=60).stdout


def _sha256s(conn: HostConnection, directory: str, names: list[str]) -> dict[str, str]:
    if not names:
        return {}
    prefix = directory.rstrip("/") + "/"
    files = " ".join(shlex.quote(prefix + n) for n in names)
    out = client.run(conn, f"{AS_POSTGRES}sha256sum -- {files}", what="checksumming files", timeout=1800).stdout
    sums = {}
    for line in out.splitlines():
        digest, _, name = line.partition("  ")
        sums[name.strip().removeprefix(prefix)] = digest.strip()
    return sums


def restore_target(inv: Inventory, backup_name: str | None = None, on: str | None = None) -> Host:
    """The host a restore check runs on, with the arguments checked; touches no host."""
    if backup_name is not None and not BACKUP_NAME.fullmatch(backup_name):
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
        client.run(dst, f"test -x {RESTORE_CHECK}",
                   what=f"looking for {RESTORE_CHECK} (is the postgresql role applied?)")
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
        archived = client.run(src, f"{AS_POSTGRES}ls -1 {WAL_DIR}", what="listing the WAL archive",
                              timeout=60).stdout.split()
        wal = wal_needed(chosen.start_wal, reference["restore_lsn"], archived)
        report(f"copying backup {chosen.name} ({chosen.size_bytes} bytes) and {len(wal)} WAL files "
               f"to {target.name}", topo.primary.name)
        meta = [*files, "roadie-backup.json", "roadie-reference.json"]
        client.run(dst, f"{AS_POSTGRES}rm -rf {shlex.quote(copy)} && {AS_POSTGRES}install -d -m 0700 "
                        f"{shlex.quote(COPY_DIR)} {shlex.quote(copy)} {shlex.quote(copy + '/wal')}",
                   what="creating the copy directory")
        copy_started = time.monotonic()
        moved = stream_tar(src, src_dir, meta, dst, copy)
        moved += stream_tar(src, WAL_DIR, wal, dst, copy + "/wal")
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

