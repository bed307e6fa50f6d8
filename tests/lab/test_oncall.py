"""On-call commands against the real lab: status, drain, rolling restart, maintenance, cache, logs, disk, run.

The commands run as an operator runs them (`fab ...` in a subprocess, no terminal), so argument
parsing, confirmation, exit codes and output are what is tested, not only the library calls.
"""

import json
import re
import time
import uuid

import pytest

from roadie.deploy.balancer import Balancer
from roadie.lab import engine, lab
from roadie.status import probe
from tests.lab.fabrun import fab, ok
from tests.lab.hosts import redis_admin
from tests.lab.traffic import Traffic, get


def _out(conn, command: str) -> str:
    """A command's output on a host (no stdin: pytest captures it)."""
    return conn.run(command, hide=True, warn=True, in_stream=False).stdout.strip()


def test_status_is_right_for_every_column(stack, lab_inventory, conns):
    for _ in range(6):      # the stream hosts open their database and cache connections (pooled, kept)
        assert get(stack["lb"], "/tracks")[0] == 200
    report = json.loads(ok(fab("status", "--json")))
    assert report["problems"] == []
    rows = {r["host"]: r for r in report["hosts"]}
    assert set(rows) == set(lab_inventory.hosts)
    # What each stream host runs, read as root: every row must say the same.
    release = {h: _out(conns(h), "readlink /srv/stream/current").rsplit("/", 1)[-1]
               for h in ("stream1", "stream2", "stream3")}
    for name, row in rows.items():
        assert row["reachable"] and row["healthy"] and not row["error"], row
        assert 0 <= row["load1"] < 100 and 0 < row["mem_used_pct"] < 100 and 0 < row["disk_used_pct"] <= 100
        assert row["services"] and set(row["services"].values()) == {"active"}, row
        if name.startswith("stream"):
            assert row["release"] == release[name] and row["haproxy"] == "UP" and row["sessions"] >= 0
            assert set(row["services"]) == {"stream.service", "nginx.service"}
        else:
            assert row["release"] is None and row["haproxy"] is None
    assert rows["db1"]["pg_role"] == "primary" and rows["db2"]["pg_role"] == "replica"
    assert rows["db1"]["pg_lag_bytes"] < 16 * 1024 * 1024 and rows["db2"]["pg_lag_bytes"] < 16 * 1024 * 1024
    assert rows["cache1"]["redis_role"] == "master" and rows["cache1"]["redis_memory"] > 0
    assert rows["cache1"]["redis_clients"] >= 1          # this probe's own connection at least
    # Where the stream hosts' connections go (what names the live primary when two claim the role).
    assert rows["db1"]["pg_stream_clients"] >= 1 and rows["db2"]["pg_stream_clients"] == 0
    assert rows["cache1"]["redis_stream_clients"] >= 1
    assert rows["lb1"]["services"] == {"haproxy.service": "active"}
    text = ok(fab("status"))
    assert text.splitlines()[0].split()[:4] == ["host", "groups", "reach", "release"]
    assert all(any(line.startswith(h + " ") for line in text.splitlines()) for h in lab_inventory.hosts)


def test_status_answers_for_the_rest_when_a_host_is_down(stack, lab_inventory):
    engine.docker("stop", "--time", "5", engine.container_name("cache1"))
    try:
        result = fab("status", "--json")
        assert result.returncode == 1
        assert "cache1" in result.stderr.strip().splitlines()[-1]
        rows = {r["host"]: r for r in json.loads(result.stdout)["hosts"]}
        assert not rows["cache1"]["reachable"] and "unreachable" in rows["cache1"]["error"]
        assert all(r["reachable"] for n, r in rows.items() if n != "cache1")
        assert rows["db1"]["pg_role"] == "primary"
    finally:
        engine.docker("start", engine.container_name("cache1"))
        lab._wait_ssh_ready("cache1")
    deadline = time.monotonic() + 60
    while not probe.probe(lab_inventory.hosts["cache1"], lab_inventory).healthy:
        assert time.monotonic() < deadline, "cache1 did not come back"
        time.sleep(1)


def test_drain_takes_a_host_out_of_rotation_and_undrain_puts_it_back(stack, conns):
    lb = Balancer(conns("lb1"))
    refused = fab("drain", "stream2", "--min-serving", "3")
    assert refused.returncode == 1 and "below --min-serving 3" in refused.stderr
    assert lb.server("stream2").status == "UP"
    out = ok(fab("drain", "stream2", "--message", "lab test"))
    assert "drained: no sessions left" in out
    try:
        assert lb.server("stream2").status == "DRAIN"
        rows = {r["host"]: r for r in json.loads(fab("status", "--json", "--group", "stream").stdout)["hosts"]}
        assert rows["stream2"]["haproxy"] == "DRAIN"
    finally:
        ok(fab("undrain", "stream2"))
    assert lb.server("stream2").in_rotation
    actions = [e["action"] for e in json.loads(ok(fab("audit", "--last", "2", "--json")))]
    assert actions == ["drain", "undrain"]


def test_rolling_restart_under_load_drops_nothing(stack, conns):
    before = {h: _out(conns(h), "systemctl show -p MainPID --value stream.service")
              for h in ("stream1", "stream2", "stream3")}
    with Traffic(stack["lb"], paths=("/tracks", "/tracks/1", "/livez" if _has_livez(stack) else "/tracks")) as t:
        out = ok(fab("restart", "--group", "stream", "--rolling", "--yes"))
    after = {h: _out(conns(h), "systemctl show -p MainPID --value stream.service")
             for h in before}
    assert all(before[h] != after[h] for h in before), (before, after)     # every host really restarted
    assert t.report.sent > 50 and t.report.failed == 0, t.report.failures
    assert "3 hosts restarted and healthy" in out
    print(f"\nrolling restart of 3 stream hosts: {t.report.sent} requests, {t.report.failed} failed")


def _has_livez(stack) -> bool:
    status_code, _, _ = get(stack["lb"], "/livez")
    return status_code == 200


DATA_UNITS = {"cache1": "redis-server.service", "db1": "postgresql@15-main.service",
              "db2": "postgresql@15-main.service"}


def _main_pids(conns) -> dict[str, str]:
    return {h: _out(conns(h), f"systemctl show -p MainPID --value {unit}") for h, unit in DATA_UNITS.items()}


def test_restart_of_the_data_tier_is_one_by_one_health_checked_and_the_primary_needs_a_flag(stack, conns):
    before = _main_pids(conns)
    refused = fab("restart", "--group", "cache,database", "--yes")
    assert refused.returncode == 1 and "--include-primary" in refused.stderr and "db1" in refused.stderr
    assert _main_pids(conns) == before                                        # nothing restarted
    out = ok(fab("restart", "--group", "cache,database", "--include-primary", "--yes"))
    assert "db1 (PRIMARY: writes pause while it restarts)" in out
    lines = [ln for ln in out.splitlines() if "restarting" in ln]
    assert [ln.split(":")[0] for ln in lines] == ["cache1", "db2", "db1"]    # the primary last
    assert out.count("healthy again") == 3
    after = _main_pids(conns)
    assert all(after[h] != before[h] and after[h] != "0" for h in DATA_UNITS), (before, after)


def test_maintenance_mode_answers_503_with_the_message_until_turned_off(stack, conns):
    ok(fab("maintenance.on", "--message", "Upgrading <the> database", "--retry-after", "90", "--yes"))
    try:
        code, headers, body = get(stack["lb"], "/tracks")
        assert code == 503 and headers["retry-after"] == "90" and headers["cache-control"] == "no-store"
        assert b"Upgrading &lt;the&gt; database" in body
        assert "maintenance on" in ok(fab("maintenance.status"))
        for host in ("stream1", "stream2", "stream3"):     # the stream hosts keep running behind it
            state = _out(conns(host), "systemctl is-active stream.service")
            assert state == "active"
        assert Balancer(conns("lb1")).server("stream1").in_rotation
    finally:
        ok(fab("maintenance.off", "--yes"))
    code, _, _ = get(stack["lb"], "/tracks")
    assert code == 200
    assert "maintenance off" in ok(fab("maintenance.status"))


def test_cache_flush_needs_yes_and_deletes_only_the_matching_keys(stack, conns, secrets):
    cache1, password = conns("cache1"), secrets["vault_redis_admin_password"]

    def redis(*argv: str) -> str:
        """Redis on cache1 itself, as its admin user: the real key space, not what fab reports of it."""
        return redis_admin(cache1, password, *argv)

    token = uuid.uuid4().hex[:12]
    matching = [f"tracks:lab-flush-{token}-{n}" for n in range(3)]
    outside = f"roadie:lab-flush-{token}"
    for key in (*matching, outside):
        assert redis("SET", key, "planted", "EX", "600") == "OK"
    try:
        assert get(stack["lb"], "/tracks")[0] == 200          # the service caches the catalogue as well
        info = json.loads(ok(fab("cache.info", "--json")))[0]
        assert info["role"] == "master" and info["keys"] >= len(matching) + 1
        refused = fab("cache.flush")
        assert refused.returncode == 1 and "pass --yes" in refused.stderr
        said = re.search(r"will delete (\d+) of (\d+) keys", refused.stdout)
        assert said and said[1] == said[2] and int(said[1]) >= len(matching) + 1, refused.stdout
        assert redis("EXISTS", *matching, outside) == str(len(matching) + 1)      # refused: nothing deleted
        before = int(redis("DBSIZE"))
        ok(fab("cache.flush", "--pattern", "tracks:*", "--yes"))
        left = redis("--scan", "--pattern", "tracks:*").split()
        assert left == [], left[:5]                                               # every matching key went
        assert redis("EXISTS", outside) == "1"                                    # and only those
        assert int(redis("DBSIZE")) <= before - len(matching)
        assert get(stack["lb"], "/tracks")[0] == 200
        assert redis("--scan", "--pattern", "tracks:*").split(), "the catalogue was not cached again on demand"
    finally:
        redis("DEL", *matching, outside)


def test_logs_are_host_prefixed(stack):
    out = ok(fab("logs", "stream1", "--lines", "5"))
    lines = out.splitlines()
    assert lines and all(ln.startswith("stream1: ") for ln in lines)
    none = fab("logs", "db1", "--grep", "no-such-line-anywhere-3f9a")
    assert none.returncode == 0
    assert ok(fab("logs", "lb1", "--unit", "haproxy.service", "--since", "1 hour ago", "--lines", "3"))


def test_disk_reports_every_host_and_fails_over_the_threshold(stack, lab_inventory):
    out = ok(fab("disk", "--json"))
    data = json.loads(out)
    assert {f["host"] for f in data["filesystems"]} == set(lab_inventory.hosts)
    over = fab("disk", "--threshold", "0.5")
    assert over.returncode == 1 and "over 0.5%" in over.stderr


def test_run_reports_the_failing_host(stack):
    result = fab("run", 'test "$(hostname)" != stream2 && echo fine', "--group", "stream", "--yes")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "error: 1 of 3 hosts failed: stream2"
    assert "stream1: fine" in result.stdout and "stream3: fine" in result.stdout
    assert "stream2: FAILED exit 1" in result.stdout
    refused = fab("run", "uptime", "--group", "stream")
    assert refused.returncode == 1 and "pass --yes" in refused.stderr
    assert ok(fab("run", "uptime", "--group", "all", "--yes")).count("load average") == 7


@pytest.fixture(autouse=True)
def _lock_free_after(stack, conns):
    yield
    from roadie.change import lock
    holder, _ = lock.status(conns("lb1"))
    assert holder is None, f"a test left the deploy lock held: {holder}"
