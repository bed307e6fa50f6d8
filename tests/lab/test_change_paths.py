"""Every change path keeps serving (issue 14), each under client load that counts every failed request:
long streams across a deploy, Ctrl-C and SIGKILL mid-batch, the recovery that follows, the live capacity
guard, hosts drained on purpose, and a lease that outlives its TTL."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from roadie.change import audit, lock
from roadie.core.fleet import Fleet
from roadie.deploy import deploy, release
from roadie.deploy.balancer import Balancer
from tests.lab.fabrun import fab, start_fab
from tests.lab.releases import build_variant
from tests.lab.traffic import BIG, Traffic


def wait_for_line(proc: subprocess.Popen, needle: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(needle in line for line in proc.lines):        # type: ignore[attr-defined]
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"no line with {needle!r} in: {''.join(proc.lines)[-3000:]}")  # type: ignore[attr-defined]


def new_release(tmp_path: Path, tag: str) -> tuple[Path, str]:
    artifact = build_variant(tmp_path, f"{tag}-{int(time.time())}")
    return artifact, release.verify(artifact).release_id


def paced_download(host: str, path: str, rate: int, answered: threading.Event | None = None) -> dict:
    """GET `path` through the balancer at about `rate` bytes a second with a tiny receive buffer (so it stays
    in flight end to end); the status, the body's length and sha256. Sets `answered` once the head is in."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(60)
    sock.connect((host, 80))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    head, _, body = head.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if answered is not None:
        answered.set()
    digest, length, started = hashlib.sha256(body), len(body), time.monotonic()
    while chunk := sock.recv(8192):
        digest.update(chunk)
        length += len(chunk)
        ahead = length / rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)
    sock.close()
    assert "transfer-encoding: chunked" not in head.decode("latin-1").lower()
    return {"status": int(lines[0].split()[1]), "length": length, "sha256": digest.hexdigest(),
            "seconds": time.monotonic() - started}


def releases_now(fleet: Fleet) -> dict[str, str | None]:
    return {s.host: s.current for s in deploy.host_releases(fleet)}


def rotation(conns) -> dict[str, str]:
    return {name: s.status for name, s in Balancer(conns("lb1")).servers().items()}


def last_record(conns) -> dict:
    lines = conns("lb1").run(f"tail -n 1 {audit.LOG_PATH}", hide=True, in_stream=False).stdout.splitlines()
    return json.loads(lines[-1])


@pytest.fixture
def fleet(stack):
    return stack["fleet"]


@pytest.fixture
def whole(fleet, conns):
    """Leaves the fleet whole after the test: every stream host in rotation, the lock free."""
    yield
    for name in ("stream1", "stream2", "stream3"):
        Balancer(conns("lb1")).enable(name)
    lock.force_release(conns("lb1"))
    fab("undrain", "stream3")


# ------------------------------------------------------------------ long streams
def test_a_long_stream_crosses_a_deploy_byte_for_byte_and_the_lease_outlives_its_ttl(stack, fleet, big_track,
                                                                                    tmp_path, whole):
    artifact, new_id = new_release(tmp_path, "long-stream")
    got: dict = {}
    # Past the old 60 s drain limit and well past the lease's TTL (the lab's roadie_lease_ttl).
    ttl = fleet.lease_ttl
    long_s = max(60, ttl + 10) + 15
    answered = threading.Event()
    reader = threading.Thread(target=lambda: got.update(paced_download(stack["lb"], "/tracks/1/audio",
                                                                       rate=BIG // long_s, answered=answered)))
    with Traffic(stack["lb"]) as traffic:
        reader.start()
        assert answered.wait(30), "the long stream got no answer"
        started = time.monotonic()
        proc = start_fab("deploy", "--artifact", str(artifact), "--yes")
        # Well after the lease's TTL, a second deploy is still refused (the heartbeat renews it).
        time.sleep(max(0.0, ttl + 10 - (time.monotonic() - started)))
        assert proc.poll() is None, "".join(proc.lines)[-3000:]       # still draining the long stream
        second = fab("deploy", "--artifact", str(artifact), "--yes", timeout=120)
        assert second.returncode == 1 and "deploy lock on lb1 is held by" in second.stderr, second.stderr
        assert proc.wait(timeout=900) == 0, "".join(proc.lines)[-3000:]
        reader.join(timeout=300)
    assert got["status"] == 200 and got["length"] == BIG and got["seconds"] > max(60, ttl + 10), got
    assert got["sha256"] == big_track                                      # byte for byte
    assert traffic.report.failed == 0, traffic.report.failures
    assert set(releases_now(fleet).values()) == {new_id}
    assert "sessions cut" not in "".join(proc.lines) and "drain limit" not in "".join(proc.lines)


# ------------------------------------------------------------------ interrupts and a lost operator
def test_ctrl_c_mid_batch_makes_the_batch_safe_frees_the_lock_and_exits_130(stack, fleet, conns, tmp_path, whole):
    artifact, new_id = new_release(tmp_path, "sigint")
    with Traffic(stack["lb"]) as traffic:
        proc = start_fab("deploy", "--artifact", str(artifact), "--yes")
        wait_for_line(proc, "batch 2/3")
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=300)
    out = "".join(proc.lines)
    assert code == 130, out[-3000:]
    assert "batch 3/3" not in out and "resume with the same command" in out
    assert set(rotation(conns).values()) == {"UP"}, rotation(conns)       # the batch's hosts are back
    assert lock.status(conns("lb1"))[0] is None                             # the lock is free
    record = last_record(conns)
    assert record["action"] == "deploy" and record["result"] == "interrupted" and record["release"] == new_id
    assert traffic.report.failed == 0, traffic.report.failures


def test_a_killed_deploy_is_flagged_by_status_and_the_next_deploy_makes_the_fleet_whole(stack, fleet, conns,
                                                                                         tmp_path, whole):
    artifact, new_id = new_release(tmp_path, "sigkill")
    with Traffic(stack["lb"]) as traffic:
        proc = start_fab("deploy", "--artifact", str(artifact), "--yes")
        wait_for_line(proc, "stream2: draining in HAProxy")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        # The lease lapses by itself within its TTL: nobody renews it any more.
        deadline = time.monotonic() + fleet.lease_ttl + 30
        while time.monotonic() < deadline:
            holder, now = lock.status(conns("lb1"))
            if holder is not None and holder.expires_at < now:
                break
            time.sleep(2)
        status = fab("status")
        assert status.returncode != 0, status.stdout
        text = status.stdout + status.stderr
        assert "stream2" in text and "out of rotation" in text, text[-3000:]
        assert "different releases" in text and "lapsed" in text, text[-3000:]
        again = fab("deploy", "--artifact", str(artifact), "--yes")          # no manual step
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-2000:]
    assert "took over a lapsed lease" in again.stdout
    assert set(releases_now(fleet).values()) == {new_id}
    assert set(rotation(conns).values()) == {"UP"}
    assert fab("status").returncode == 0
    assert traffic.report.failed == 0, traffic.report.failures


# ------------------------------------------------------------------ the live guard and hosts drained on purpose
def test_the_live_guard_counts_what_haproxy_serves_and_a_purposeful_drain_survives(stack, fleet, conns, tmp_path,
                                                                                    whole):
    drained = fab("drain", "stream3", "--message", "disk swap")
    assert drained.returncode == 0, drained.stdout + drained.stderr
    artifact, new_id = new_release(tmp_path, "guard")
    before = releases_now(fleet)
    refused = fab("deploy", "--artifact", str(artifact), "--yes", "--min-serving", "2")
    assert refused.returncode == 1, refused.stdout[-2000:]
    line = refused.stderr.strip().splitlines()[-1]
    # With stream3 out, two hosts cannot keep two serving while one is updated: refused before any change.
    assert "--min-serving 2" in line and "already out of rotation: stream3" in line, line
    assert releases_now(fleet) == before                                    # nothing switched
    with Traffic(stack["lb"]) as traffic:
        ok = fab("deploy", "--artifact", str(artifact), "--yes")
        assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-2000:]
        assert "left out of this plan: drained on purpose" in ok.stdout
        pids = _main_pids(conns, "stream.service")
        restarted = fab("restart", "--group", "stream", "--yes")
        assert restarted.returncode == 0, restarted.stdout[-3000:] + restarted.stderr[-2000:]
    # The restart went round the hosts in rotation (a new MainPID) and left the drained one alone.
    after = _main_pids(conns, "stream.service")
    assert after["stream1"] not in (pids["stream1"], "0") and after["stream2"] not in (pids["stream2"], "0"), after
    assert after["stream3"] == pids["stream3"], (pids, after)
    assert rotation(conns)["stream3"].startswith("DRAIN"), rotation(conns)
    now = releases_now(fleet)
    assert now["stream1"] == now["stream2"] == new_id and now["stream3"] == before["stream3"]
    assert traffic.report.failed == 0, traffic.report.failures
    assert fab("undrain", "stream3").returncode == 0
    assert fab("deploy", "--artifact", str(artifact), "--yes").returncode == 0    # whole again
    assert set(releases_now(fleet).values()) == {new_id}


# ------------------------------------------------------------------ playbook changes to a serving fleet
def _main_pids(conns, unit: str) -> dict[str, str]:
    return {h: conns(h).run(f"systemctl show -p MainPID --value {unit}", hide=True, in_stream=False).stdout.strip()
            for h in ("stream1", "stream2", "stream3")}


def test_a_playbook_change_under_load_restarts_host_by_host_and_drops_nothing(stack, fleet, big_track, conns,
                                                                            whole):
    from roadie.lab import provision

    stream_pids, nginx_pids = _main_pids(conns, "stream.service"), _main_pids(conns, "nginx.service")
    # A stream setting (the env file: restarts the service) and Debian's default site back (its removal
    # restarts nginx), applied with the stream playbook while clients play and one long download runs.
    for host in ("stream1", "stream2", "stream3"):
        conns(host).run("ln -sfn /etc/nginx/sites-available/default /etc/nginx/sites-enabled/default",
                        hide=True, in_stream=False)
    got: dict = {}
    answered = threading.Event()
    reader = threading.Thread(target=lambda: got.update(paced_download(stack["lb"], "/tracks/1/audio",
                                                                       rate=700 * 1024, answered=answered)))
    try:
        with Traffic(stack["lb"]) as traffic:
            reader.start()
            assert answered.wait(30), "the download got no answer"
            # Through the change pipeline, as `inv provision` runs it (a serving fleet: the lease is taken).
            run = provision.run_in_change("stream", "lab", extra_args=("-e", "streaming_cache_ttl=61"))
            reader.join(timeout=300)
        assert run.ok, run.output[-4000:]
        record = last_record(conns)
        assert record["action"] == "provision" and record["result"] == "ok" and record["ssh_key"], record
        assert traffic.report.failed == 0, traffic.report.failures
        assert got["status"] == 200 and got["length"] == BIG and got["sha256"] == big_track, got
        # Every host was restarted (a new MainPID), one at a time behind a drain.
        assert all(_main_pids(conns, "stream.service")[h] != stream_pids[h] for h in stream_pids)
        assert all(_main_pids(conns, "nginx.service")[h] != nginx_pids[h] for h in nginx_pids)
        drains = [line for line in run.output.splitlines() if "rolling_restart | Drain the host" in line]
        assert len(drains) == 3, drains
        assert set(rotation(conns).values()) == {"UP"}
    finally:
        with Traffic(stack["lb"]) as traffic:
            back = provision.run_in_change("stream", "lab")          # the inventory's setting again
        assert back.ok, back.output[-4000:]
        assert traffic.report.failed == 0, traffic.report.failures


# ------------------------------------------------------------------ data-tier restarts
def _pg(conns, host: str, sql: str) -> str:
    result = conns(host).run(f"runuser -u postgres -- psql -X -At -c \"{sql}\"", hide=True, in_stream=False)
    return result.stdout.strip()


def _redis_pid(conns) -> str:
    return conns("cache1").run("systemctl show -p MainPID --value redis-server.service", hide=True,
                               in_stream=False).stdout.strip()


def _streaming(conns, timeout: float = 30) -> bool:
    """Whether db2 streams from db1, waiting for a replica that reconnects after its primary's restart
    (the WAL receiver retries every wal_retrieve_retry_interval, 5 s)."""
    deadline = time.monotonic() + timeout
    while _pg(conns, "db1", "SELECT state FROM pg_stat_replication") != "streaming":
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_a_standby_sensitive_setting_that_goes_down_restarts_the_primary_before_its_replica(stack, conns, whole):
    # A replica restarted first with a max_connections lower than its primary's refuses to start ("recovery
    # aborted because of insufficient parameter settings"): a decrease goes primary first, a rise replica first.
    from roadie.lab import provision

    started = "SELECT extract(epoch FROM pg_postmaster_start_time())"
    db1_start, db2_start = _pg(conns, "db1", started), _pg(conns, "db2", started)
    before = _pg(conns, "db1", "SHOW max_connections")
    lowered = str(int(before) - 10)
    change = ("-e", json.dumps({"postgresql_max_connections": int(lowered)}))     # an int, as the spec wants
    try:
        # A run limited to the replica skips the play that restarts the primary first: the replica refuses
        # to restart below what its primary runs.
        limited = provision.run_in_change("database", "lab", limit="db2", extra_args=change)
        assert limited.returncode != 0
        assert (f"db2: max_connections {lowered} (the primary runs {before}): a replica restarted below its primary"
                in " ".join(limited.output.split())), limited.output[-3000:]
        assert _pg(conns, "db2", started) == db2_start and _streaming(conns)

        # One going down beside one going up has no safe order: refused before anything restarts, flag or not.
        mixed = provision.run_in_change("database", "lab", restart_primary=True, extra_args=(
            "-e", json.dumps({"postgresql_max_connections": int(lowered), "postgresql_max_wal_senders": 12})))
        assert mixed.returncode != 0
        assert ("max_connections go down (the primary restarts before its replicas) while max_wal_senders go up"
                in " ".join(mixed.output.split())), mixed.output[-3000:]
        assert (_pg(conns, "db1", started), _pg(conns, "db2", started)) == (db1_start, db2_start)

        # Without the flag, with the stream hosts connected: refused before anything restarts.
        with Traffic(stack["lb"]) as traffic:
            refused = provision.run_in_change("database", "lab", extra_args=change)
        assert refused.returncode != 0
        assert ("max_connections go down, so the primary restarts before its replicas: nothing has restarted"
                in refused.output and "--restart-primary" in refused.output), refused.output[-3000:]
        assert traffic.report.failed == 0, traffic.report.failures
        assert (_pg(conns, "db1", started), _pg(conns, "db2", started)) == (db1_start, db2_start)
        assert _pg(conns, "db2", "SHOW max_connections") == before and _streaming(conns)

        applied = provision.run_in_change("database", "lab", extra_args=change, restart_primary=True)
        assert applied.ok, applied.output[-3000:]
        primary_at, replica_at = float(_pg(conns, "db1", started)), float(_pg(conns, "db2", started))
        assert float(db1_start) < primary_at < replica_at, "the replica restarted before its primary"
        assert _pg(conns, "db1", "SHOW max_connections") == _pg(conns, "db2", "SHOW max_connections") == lowered
        assert _streaming(conns)
    finally:
        back = provision.run_in_change("database", "lab", restart_primary=True)    # a rise: the replica first
        assert back.ok, back.output[-3000:]
    assert _pg(conns, "db1", "SHOW max_connections") == _pg(conns, "db2", "SHOW max_connections") == before
    assert float(_pg(conns, "db2", started)) < float(_pg(conns, "db1", started))
    assert _streaming(conns)


def test_data_tier_restarts_go_replica_first_and_a_primary_with_clients_needs_the_flag(stack, conns, whole):
    from roadie.lab import provision

    started = "SELECT extract(epoch FROM pg_postmaster_start_time())"
    db1_start, db2_start, redis_pid = _pg(conns, "db1", started), _pg(conns, "db2", started), _redis_pid(conns)
    before = _pg(conns, "db1", "SHOW shared_buffers")
    changed = "160MB" if before != "160MB" else "144MB"
    pg_change = ("-e", f"postgresql_shared_buffers={changed}")
    try:
        # A PostgreSQL setting that needs a restart, applied by CI to a serving fleet, without the flag:
        # the replica restarts with it, the primary keeps its sessions, the run fails saying what waits.
        with Traffic(stack["lb"]) as traffic:
            refused = provision.run_in_change("database", "lab", extra_args=pg_change)
        assert refused.returncode != 0
        assert ("db1 is the PostgreSQL primary: shared_buffers wait for a restart that cuts" in refused.output
                and "--restart-primary" in refused.output), refused.output[-3000:]
        assert traffic.report.failed == 0, traffic.report.failures
        assert _pg(conns, "db2", "SHOW shared_buffers") == changed and _pg(conns, "db2", started) != db2_start
        assert _pg(conns, "db1", started) == db1_start
        assert _pg(conns, "db1", "SELECT pending_restart FROM pg_settings WHERE name = 'shared_buffers'") == "t"
        assert last_record(conns)["result"] == "failed"

        # With --restart-primary: the primary restarts after its replica (which has nothing left to do).
        replica_done = _pg(conns, "db2", started)
        with Traffic(stack["lb"]) as traffic:
            applied = provision.run_in_change("database", "lab", extra_args=pg_change, restart_primary=True)
        assert applied.ok, applied.output[-3000:]
        print(f"primary restart with --restart-primary: {traffic.report.failed} of {traffic.report.sent} "
              "requests failed (announced)")
        assert _pg(conns, "db1", "SHOW shared_buffers") == changed
        assert float(_pg(conns, "db1", started)) > float(replica_done) and _pg(conns, "db2", started) == replica_done
        assert "--restart-primary" in last_record(conns)["message"]

        # A redis.conf change: cache1 is the primary with the stream hosts connected; it waits for the flag.
        with Traffic(stack["lb"]) as traffic:
            refused = provision.run_in_change("cache", "lab", extra_args=("-e", "redis_maxmemory=200mb"))
        assert refused.returncode != 0
        assert "cache1 is the Redis primary: its configuration changed and waits for a restart that cuts" \
            in refused.output, refused.output[-3000:]
        assert traffic.report.failed == 0, traffic.report.failures
        assert _redis_pid(conns) == redis_pid
        # Still pending on the next run, although redis.conf no longer changes.
        again = provision.run_in_change("cache", "lab", extra_args=("-e", "redis_maxmemory=200mb"))
        assert again.returncode != 0 and "waits for a restart" in again.output
        applied = provision.run_in_change("cache", "lab", extra_args=("-e", "redis_maxmemory=200mb"),
                                          restart_primary=True)
        assert applied.ok, applied.output[-3000:]
        assert _redis_pid(conns) != redis_pid
        assert conns("cache1").run("test -e /run/roadie-redis-restart-pending", warn=True, hide=True,
                                   in_stream=False).exited == 1
    finally:
        for playbook in ("database", "cache"):
            back = provision.run_in_change(playbook, "lab", restart_primary=True)    # the inventory's settings
            assert back.ok, back.output[-3000:]
    assert _pg(conns, "db1", "SHOW shared_buffers") == before
