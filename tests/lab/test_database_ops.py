"""Database operations against the real lab: backup, restore check (good and damaged), replication, failover.

The commands run as an operator runs them (`fab db.* ...` in a subprocess, no terminal). The failover test
writes plays through lb1 the whole time, fails over to db2, checks every answered play on the new primary,
and then puts the lab back to db1 primary / db2 replica with the runbook the failover prints (a swapped,
git-ignored copy of the lab inventory to rebuild db1 as a replica of db2, a failback, a rebuild of db2).
"""

from __future__ import annotations

import http.client
import json
import shlex
import threading
import time
import uuid
from dataclasses import dataclass, field

import pytest

from roadie.core import inventory
from roadie.db import backups as db_backups
from roadie.db import client as pg_client
from roadie.db import fencing
from roadie.db import restore_check as db_restore
from tests.lab.fabrun import fab, ok
from tests.lab.hosts import checked
from tests.lab.topology import database_hosts, restore_topology, wait_streaming


# ------------------------------------------------------------------ backups and restore checks
@pytest.fixture(scope="module")
def fresh_backup(stack):
    out = ok(fab("db.backup", "--yes"))
    line = next(ln for ln in out.splitlines() if ln.startswith("db1: backup "))
    name = line.split()[2].rstrip(":")
    print(f"\n{line}")
    return name


def test_backup_is_listed_with_size_and_reference(fresh_backup, conns):
    listed = json.loads(ok(fab("db.backups", "--json")))
    mine = next(b for b in listed if b["name"] == fresh_backup)
    assert mine["size_bytes"] > 1_000_000 and mine["has_reference"]
    assert set(mine["sha256"]) == {"base.tar.gz", "pg_wal.tar.gz", "backup_manifest"}
    # The listing is what db1 holds: the files are there, with the checksums it shows.
    files = " ".join(sorted(mine["sha256"]))
    sums = checked(conns("db1"), f"cd {db_backups.BASE_DIR}/{fresh_backup} && sha256sum {files}")
    assert {name: digest for digest, name in (line.split() for line in sums.splitlines())} == mine["sha256"]
    assert 0 <= mine["age_s"] < 600
    assert fresh_backup in ok(fab("db.backups"))


def test_restore_check_passes_on_a_good_backup(fresh_backup, conns):
    result = fab("db.restore-check", "--backup", fresh_backup, "--json")
    check = json.loads(ok(result))
    assert check["ok"] and check["problems"] == [] and check["host"] == "db2"
    assert set(check["tables"]) == {"tracks", "plays"}
    assert check["tables"] == check["reference"]
    assert check["tables"]["tracks"]["rows"] == 12
    # The reference is what the primary held: the tracks table has not changed since.
    live = pg_client.psql(conns("db1"), "SELECT count(*) FROM tracks", "stream")
    assert int(live) == check["tables"]["tracks"]["rows"]
    # Nothing is left on the checking host.
    assert checked(conns("db2"), f"ls -A {db_restore.COPY_DIR} 2>/dev/null; ls -d /var/lib/postgresql/restore-check "
                                 "2>/dev/null || true").strip() == ""
    print(f"\nrestore-check of {fresh_backup} on db2: restore {check['restore_s']:.0f} s, copy "
          f"{check['copy_bytes']} bytes in {check['copy_s']:.1f} s, total {check['duration_s']:.1f} s")


def _damaged_copy(conn, source: str, name: str, edit: str) -> None:
    """A copy of backup `source` named `name` on db1, changed by the Python statement `edit` (cwd = the copy)."""
    base = db_backups.BASE_DIR
    checked(conn, f"cp -a {base}/{source} {base}/{name}")
    script = f"import json, os\nos.chdir({base + '/' + name!r})\n{edit}\n"
    checked(conn, f"python3 -c {shlex.quote(script)}")


FLIP_BYTE = """
with open("base.tar.gz", "r+b") as f:
    f.seek(os.path.getsize("base.tar.gz") // 2)
    byte = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([byte[0] ^ 0xFF]))
"""

# Damage that decodes to a zero block where a member's header was: plain `tar -xzf` takes it for the end of
# the archive and exits 0 with half a cluster unpacked, never hearing gzip's CRC error. The trailer keeps the
# undamaged archive's CRC and length, as a damaged file's would.
ZERO_BLOCK = """
import gzip, io, tarfile, zlib
raw = gzip.decompress(open("base.tar.gz", "rb").read())
members = tarfile.open(fileobj=io.BytesIO(raw)).getmembers()
at = members[len(members) // 2].offset
packed = bytearray(gzip.compress(raw[:at] + bytes(1024) + raw[at + 1024:]))
packed[-8:-4] = zlib.crc32(raw).to_bytes(4, "little")
open("base.tar.gz", "wb").write(packed)
"""

STRIP_SHA256 = """
meta = json.load(open("roadie-backup.json"))
meta.pop("sha256")
json.dump(meta, open("roadie-backup.json", "w"))
"""


def test_a_damaged_backup_fails_loudly_naming_what_failed(fresh_backup, conns):
    db1 = conns("db1")
    names = ["20000101T000001Z", "20000101T000002Z", "20000101T000003Z", "20000101T000004Z"]
    try:
        # 1. A flipped byte in base.tar.gz: the sha256 recorded at backup time names the file.
        _damaged_copy(db1, fresh_backup, names[0], FLIP_BYTE)
        result = fab("db.restore-check", "--backup", names[0])
        assert result.returncode == 1
        assert "RESTORE CHECK FAILED" in result.stderr and "base.tar.gz" in result.stderr
        assert "does not match the sha256 recorded at backup time" in result.stderr
        # 2. The same damage with the recorded checksums gone: the restore itself fails, loudly.
        _damaged_copy(db1, fresh_backup, names[1], FLIP_BYTE + STRIP_SHA256)
        result = fab("db.restore-check", "--backup", names[1])
        assert result.returncode == 1
        assert f"RESTORE CHECK FAILED: backup {names[1]}: restore on db2 failed" in result.stderr
        assert "cannot unpack" in result.stderr and "base.tar.gz" in result.stderr
        # 2b. Damage that unpacks as an early end of the archive: gzip's CRC still fails the unpack.
        _damaged_copy(db1, fresh_backup, names[3], ZERO_BLOCK + STRIP_SHA256)
        result = fab("db.restore-check", "--backup", names[3])
        assert result.returncode == 1
        assert f"RESTORE CHECK FAILED: backup {names[3]}: restore on db2 failed" in result.stderr
        assert "cannot unpack" in result.stderr and "base.tar.gz" in result.stderr
        # 3. A changed row reference: the restore works, the comparison names the table.
        change = """
ref = json.load(open("roadie-reference.json"))
ref["tables"]["plays"]["rows"] += 1
json.dump(ref, open("roadie-reference.json", "w"))
"""
        _damaged_copy(db1, fresh_backup, names[2], change)
        result = fab("db.restore-check", "--backup", names[2])
        assert result.returncode == 1
        assert "RESTORE CHECK FAILED" in result.stderr and "table plays:" in result.stderr
        assert "recorded at backup time" in result.stderr
        print("\n" + "\n".join(ln for ln in result.stderr.splitlines() if "RESTORE CHECK FAILED" in ln))
    finally:
        checked(db1, "rm -rf " + " ".join(f"{db_backups.BASE_DIR}/{n}" for n in names))


def test_restore_check_refuses_bad_input_before_any_host():
    result = fab("db.restore-check", "--backup", "../etc")
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1] == (
        "error: --backup must be a backup name like 20260102T023000Z, got '../etc'")
    result = fab("db.failover", "--yes", "--max-lag", "lots")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "error: --max-lag must be a whole number of bytes, got 'lots'"
    result = fab("db.failover")
    assert result.returncode == 1 and "pass --yes" in result.stderr


# ------------------------------------------------------------------ replication
def test_replication_shows_the_replica_streaming_with_no_lag(stack):
    rows = {r["host"]: r for r in wait_streaming("db1", "db2")}
    assert rows["db1"]["role"] == "primary" and rows["db2"]["role"] == "replica"
    assert rows["db2"]["lag_bytes"] == 0 and rows["db2"]["lag_s"] == 0
    assert rows["db2"]["state"] == "streaming"
    slot = next(s for s in rows["db1"]["slots"] if s["slot"] == "db2")
    assert slot["active"] and slot["restart_lsn"] and slot["retained_bytes"] is not None
    out = ok(fab("db.replication"))
    assert "db2" in out and "streaming" in out and "active" in out


# ------------------------------------------------------------------ failover
@dataclass
class Writes:
    """Plays POSTed through the balancer, each with its own Idempotency-Key, and what came back."""

    host: str
    listener: str
    ok: dict = field(default_factory=dict)           # key -> (id, answered_at)
    retried: int = 0                                 # answered 2xx after the service retried the write
    failed: list = field(default_factory=list)
    sent: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _one(self, n: int) -> None:
        key = uuid.uuid4().hex
        body = json.dumps({"track_id": 1 + n % 12, "listener_id": self.listener})
        conn = http.client.HTTPConnection(self.host, 80, timeout=40)
        try:
            conn.request("POST", "/plays", body, {"Content-Type": "application/json", "Idempotency-Key": key})
            response = conn.getresponse()
            data = response.read()
            with self._lock:
                if 200 <= response.status < 300:
                    self.ok[key] = (json.loads(data)["id"], time.monotonic())
                    self.retried += int(response.getheader("X-Write-Attempts") or 1) > 1
                else:
                    self.failed.append(f"HTTP {response.status}: {data[:100]!r}")
        except (OSError, http.client.HTTPException) as exc:
            with self._lock:
                self.failed.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()

    def _loop(self, index: int) -> None:
        n = index
        deadline = time.monotonic() + 600
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                self.sent += 1
            self._one(n)
            n += 3
            time.sleep(0.05)

    def __enter__(self) -> Writes:
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(3)]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)


def _stored_keys(conn, listener: str) -> set[str]:
    out = pg_client.psql(conn, f"SELECT request_key FROM plays WHERE listener_id = '{listener}'", "stream")
    return set(out.split())


def test_failover_keeps_every_committed_play_and_writes_go_on(stack, conns):
    listener = "failover-" + uuid.uuid4().hex[:8]
    wait_streaming("db1", "db2")
    try:
        with Writes(stack["lb"], listener) as writes:
            time.sleep(3)
            before = len(writes.ok)
            started = time.monotonic()
            # --debug: the loudest output a failover has, which the secret-leak test searches as well
            result = fab("--debug", "db.failover", "--yes", "--message", "lab test")
            failover_s = time.monotonic() - started
            done_at = time.monotonic()
            time.sleep(3)
        out = ok(result)
        assert "promoted at" in out and "move db2 to database_primary and db1 to database_replica" in out
        db2 = conns("db2")
        assert pg_client.psql(db2, "SELECT pg_is_in_recovery()") == "f"
        # Every play answered 2xx is on the new primary, exactly once.
        stored = _stored_keys(db2, listener)
        assert set(writes.ok) <= stored, f"{len(set(writes.ok) - stored)} answered plays missing on db2"
        count = int(pg_client.psql(db2, f"SELECT count(*) FROM plays WHERE listener_id = '{listener}'", "stream"))
        assert count == len(stored)
        # Writes went on through the balancer after the failover, into db2.
        after = [k for k, (_, at) in writes.ok.items() if at > done_at]
        assert after and set(after) <= stored
        # No request failed: the ones that met the failover window were retried by the service.
        assert writes.failed == [], writes.failed[:5]
        # db1 is fenced: stopped, masked, marker.
        db1 = conns("db1")
        assert checked(db1, f"systemctl is-enabled {fencing.PG_UNIT} || true").strip() == "masked"
        assert json.loads(checked(db1, f"cat {fencing.FENCE_FILE}"))["new_primary"] == "db2"
        # The old primary is no fallback any more: no stream host's database list names it.
        db1_address = inventory.load("lab").host_var("db1", "roadie_private_address")
        for host in ("stream1", "stream2", "stream3"):
            assert db1_address not in database_hosts(conns(host)), host
        timings = next(ln for ln in out.splitlines() if ln.startswith("failover: done"))
        print(f"\n{timings}\nfailover (fab, wall) {failover_s:.1f} s; plays: {writes.sent} sent, {len(writes.ok)} "
              f"answered 2xx ({before} before the failover), {len(writes.failed)} failed, {writes.retried} retried "
              "by the service")
    finally:
        restore_topology(conns)
    rows = {r["host"]: r for r in wait_streaming("db1", "db2")}
    assert rows["db1"]["role"] == "primary" and rows["db2"]["lag_bytes"] == 0


# ------------------------------------------------------------------ split brain
# Every TCP packet to db1 but loopback's is answered with a reset: connections in flight break too.
# nft wants each block closed on its own line.
CUT = """table inet roadie_cut {
    chain input {
        type filter hook input priority -10; policy accept;
        iif lo accept
        meta l4proto tcp reject with tcp reset
    }
}
"""


def test_a_forced_failover_never_writes_to_the_old_primary_and_status_fences_it_at_first_contact(stack, conns):
    from roadie.lab import engine

    listener = "split-" + uuid.uuid4().hex[:8]
    db1_address = inventory.load("lab").host_var("db1", "roadie_private_address")
    wait_streaming("db1", "db2")
    # db1 is cut off: every new connection to it is refused (PostgreSQL keeps running as a primary).
    engine.docker("exec", "-i", engine.container_name("db1"), "nft", "-f", "-", input=CUT)
    try:
        with Writes(stack["lb"], listener) as writes:
            time.sleep(2)
            result = fab("db.failover", "--yes", "--force", "--message", "lab test: split brain")
            time.sleep(3)
        out = ok(result)
        assert "NOT fenced" in out or "not fenced" in out, out[-2000:]
    finally:
        engine.docker("exec", engine.container_name("db1"), "nft", "delete table inet roadie_cut")
    try:
        # db1 came back still a primary: nothing on the stream side points at it any more, and nothing was
        # written there alone (every play it holds for this listener is on db2 too).
        for host in ("stream1", "stream2", "stream3"):
            assert db1_address not in database_hosts(conns(host)), host
        stored_db2 = _stored_keys(conns("db2"), listener)
        assert set(writes.ok) <= stored_db2
        assert _stored_keys(conns("db1"), listener) <= stored_db2
        # The first Roadie command that reaches db1 fences it, and says there were two primaries.
        status = fab("status")
        assert status.returncode != 0
        text = status.stdout + status.stderr
        assert "CRITICAL" in text and "2 PostgreSQL hosts report role primary" in text, text[-3000:]
        assert "db1 was failed over to db2" in text and "fenced it now" in text, text[-3000:]
        db1 = conns("db1")
        assert checked(db1, f"systemctl is-enabled {fencing.PG_UNIT} || true").strip() == "masked"
        assert checked(db1, f"systemctl is-active {fencing.PG_UNIT} || true").strip() != "active"
        again = fab("status")
        assert "2 PostgreSQL hosts report role primary" not in again.stdout + again.stderr
    finally:
        restore_topology(conns)
    rows = {r["host"]: r for r in wait_streaming("db1", "db2")}
    assert rows["db1"]["role"] == "primary" and rows["db2"]["lag_bytes"] == 0
