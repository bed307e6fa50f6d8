"""`fab status`'s attention list from hand-made rows, and its probe run here with fake commands."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from roadie import remote
from roadie.cache import client as redis_client
from roadie.change.lock import LockInfo
from roadie.change.rotation import Drained
from roadie.core.errors import RoadieError
from roadie.core.fleet import Fleet
from roadie.core.inventory import Host, Inventory
from roadie.remote import answer, status_probe
from roadie.status import probe, report
from tests.unit.fakes import addresses_only
from tests.unit.haproxy_canned import STAT, Canned

NOW = 1_700_000_000.0
STREAM = ("stream1", "stream2", "stream3")
GROUPS = {"balancer": ("lb1",), "stream": STREAM, "database": ("db1", "db2"), "database_primary": ("db1",),
          "database_replica": ("db2",), "cache": ("cache1", "cache2")}


def _inventory() -> Inventory:
    names = ["lb1", *STREAM, "db1", "db2", "cache1", "cache2"]
    hosts = {n: Host(n, f"10.0.0.{i + 10}", 22, "deploy", Path("/dev/null"), groups=
                     tuple(sorted(g for g, members in GROUPS.items() if n in members)))
             for i, n in enumerate(names)}
    return Inventory(Path("/x/lab"), hosts, {**GROUPS, "all": tuple(names)},
                     resolver=addresses_only(hosts))


INV = _inventory()


def _row(name: str, **kw) -> probe.HostStatus:
    groups = list(INV.hosts[name].groups)
    base = {"services": {"x.service": "active"}}
    if "stream" in groups:
        base.update(release="r1", haproxy="UP", haproxy_weight=1, haproxy_check="L7OK", sessions=0)
    if name == "db1":
        base.update(pg_role="primary", pg_lag_bytes=0, pg_stream_clients=6)
    if name == "db2":
        base.update(pg_role="replica", pg_lag_bytes=0, pg_stream_clients=0)
    if name == "cache1":
        base.update(redis_role="master", redis_stream_clients=3)
    if name == "cache2":
        base.update(redis_role="slave", redis_stream_clients=0)
    return probe.HostStatus(name, groups, **{"reachable": True, **base, **kw})


def _fleet(**changes: dict) -> list[probe.HostStatus]:
    return [_row(n, **changes.get(n, {})) for n in INV.hosts]


FREE = (None, NOW)


def _lease(expires_in: float) -> tuple[LockInfo, float]:
    return LockInfo("alice@ci", "deploy", "r2", "friday", acquired_at=NOW - 100, expires_at=NOW + expires_in), NOW


def _texts(problems: list[report.Problem]) -> list[str]:
    return [p.line() for p in problems]


def test_a_healthy_fleet_needs_no_attention():
    assert report.attention(_fleet(), INV, FREE, {}) == []


@pytest.mark.parametrize("state, weight, shown", [
    ("DRAIN", 0, "HAProxy DRAIN"),
    ("MAINT", 1, "HAProxy MAINT"),
    ("MAINT (via stream/stream2)", 1, "HAProxy MAINT (via stream/stream2)"),
    ("UP", 0, "HAProxy UP, weight 0"),
])
def test_a_host_out_of_rotation_that_nobody_drained_is_a_warning_naming_it(state, weight, shown):
    problems = report.attention(_fleet(stream2={"haproxy": state, "haproxy_weight": weight}), INV, FREE, {})
    assert len(problems) == 1
    (problem,) = problems
    assert problem.severity == report.WARNING and problem.host == "stream2"
    assert problem.line().startswith(f"attention: stream2 is out of rotation ({shown})")
    assert "`fab undrain stream2`" in problem.text


def test_a_host_drained_on_purpose_is_not_a_problem_and_shows_who_and_why():
    drained = {"stream2": Drained("stream2", "bob@laptop", "kernel upgrade", NOW - 60)}
    rows = _fleet(stream2={"haproxy": "DRAIN", "haproxy_weight": 0,
                           "drained_on_purpose": drained["stream2"].describe()})
    assert report.attention(rows, INV, FREE, drained) == []
    table = {r[0]: r for r in report.table_rows(rows)}
    assert table["stream2"][-1] == "drained by bob@laptop: kernel upgrade"
    assert table["stream1"][-1] == ""
    # Out on purpose and its health check failing (drained, then stopped): the operator's business, no DOWN.
    rows = _fleet(stream2={"haproxy": "DOWN", "haproxy_weight": 0, "haproxy_check": "L4CON"})
    assert report.attention(rows, INV, FREE, drained) == []


def test_a_live_lease_suppresses_the_out_of_rotation_warning_a_lapsed_one_does_not():
    rows = _fleet(stream1={"haproxy": "DRAIN", "haproxy_weight": 0})
    assert report.attention(rows, INV, _lease(+60), {}) == []
    problems = report.attention(rows, INV, _lease(-42), {})
    assert _texts(problems) == [
        "attention: deploy lease on lb1 held by alice@ci for deploy r2, lapsed 42 s ago: its command is no longer "
        "renewing it",
        "attention: stream1 is out of rotation (HAProxy DRAIN) and was not drained on purpose, nor does a change "
        "hold the lease: `fab undrain stream1` puts it back",
    ]


def test_a_lapsed_lease_on_file_is_a_warning_on_its_own():
    (problem,) = report.attention(_fleet(), INV, _lease(-5), {})
    assert problem.severity == report.WARNING and problem.host is None
    assert "lapsed 5 s ago: its command is no longer renewing it" in problem.text


def test_an_unknown_lease_and_unknown_drains_do_not_hide_a_host_out_of_rotation():
    rows = _fleet(stream3={"haproxy": "MAINT", "haproxy_weight": 1})
    assert [p.host for p in report.attention(rows, INV, None, None)] == ["stream3"]


def test_mixed_releases_are_a_warning_listing_host_equals_release():
    rows = _fleet(stream2={"release": "r2"}, stream3={"release": None})
    (problem,) = report.attention(rows, INV, FREE, {})
    assert problem.line() == "attention: the stream hosts run different releases: stream1=r1 stream2=r2 stream3=none"
    # During a deploy the lease holder is named (still a warning: the fleet is mixed).
    (during,) = report.attention(rows, INV, _lease(+60), {})
    assert during.text.endswith("while alice@ci for deploy r2 holds the lease")
    # An unreachable stream host has no release to compare.
    rows = _fleet(stream2={"reachable": False, "release": None})
    assert report.attention(rows, INV, FREE, {}) == []


def test_a_server_down_in_haproxy_is_a_warning():
    (problem,) = report.attention(_fleet(stream3={"haproxy": "DOWN", "haproxy_check": "L7STS"}), INV, FREE, {})
    assert problem.host == "stream3" and problem.line() == "attention: stream3 is DOWN in HAProxy (DOWN, check L7STS)"


def test_a_host_missing_from_the_backend_or_a_stale_on_purpose_record_is_a_warning():
    (missing,) = report.attention(_fleet(stream3={"haproxy": "not in backend", "haproxy_weight": None}), INV,
                                  FREE, {})
    assert missing.text == "stream3 is not in HAProxy's backend: it takes no traffic"
    stale = {"stream1": Drained("stream1", "bob", "disk", NOW - 3600)}
    (problem,) = report.attention(_fleet(), INV, FREE, stale)
    assert problem.host == "stream1" and "in rotation (HAProxy UP) but recorded as drained by bob: disk" in problem.text


def test_two_postgresql_primaries_are_critical_naming_where_the_stream_hosts_write():
    rows = _fleet(db2={"pg_role": "primary", "pg_stream_clients": 0},
                  stream2={"haproxy": "DRAIN", "haproxy_weight": 0})
    problems = report.attention(rows, INV, FREE, {})
    assert [p.severity for p in problems] == [report.CRITICAL, report.WARNING]     # critical first
    assert problems[0].line() == ("CRITICAL: 2 PostgreSQL hosts report role primary: db1, db2; the stream hosts "
                                  "write to db1 (6 connections); the inventory's primary: db1")
    # Both taking writes: said; a count the probe could not read: said.
    rows = _fleet(db1={"pg_stream_clients": 2}, db2={"pg_role": "primary", "pg_stream_clients": 4})
    (split,) = report.attention(rows, INV, FREE, {})
    assert "write to db1 (2 connections) and db2 (4 connections): their writes are split" in split.text
    rows = _fleet(db1={"pg_stream_clients": None}, db2={"pg_role": "primary", "pg_stream_clients": 0})
    (unknown,) = report.attention(rows, INV, FREE, {})
    assert "none of them has connections from the stream hosts (db1: connections unknown)" in unknown.text


def test_two_redis_masters_are_critical():
    (problem,) = report.attention(_fleet(cache2={"redis_role": "master"}), INV, FREE, {})
    assert problem.severity == report.CRITICAL
    assert problem.text == ("2 Redis hosts report role master: cache1, cache2; the stream hosts write to cache1 "
                            "(3 connections)")


def test_check_adds_what_the_lock_host_could_not_say_and_the_report_has_a_problems_list(monkeypatch):
    view = probe.LockHostView(host="lb1", lease=None, drained=None,
                               errors=["cannot read the deploy lease on lb1: timed out"])
    monkeypatch.setattr(probe, "gather", lambda inv, pattern: (_fleet(), view))
    found = report.check(INV)
    assert found.problems == [report.Problem(report.WARNING, "lb1", "cannot read the deploy lease on lb1: timed out")]
    data = json.loads(json.dumps(found.as_dict()))
    assert set(data) == {"hosts", "problems"} and len(data["hosts"]) == len(INV.hosts)
    assert data["problems"] == [{"severity": "warning", "host": "lb1",
                                 "text": "cannot read the deploy lease on lb1: timed out"}]
    assert all("drained_on_purpose" in h and "healthy" in h for h in data["hosts"])


class LockHost(Canned):
    """lb1: HAProxy's runtime API from a table; usable as `with ssh.connect(...) as conn`."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def test_the_lock_host_view_reads_each_part_on_its_own(monkeypatch):
    drained = {"stream2": Drained("stream2", "bob", "disk", NOW)}
    monkeypatch.setattr(probe.ssh, "connect", lambda host: LockHost({"stat": STAT}))
    monkeypatch.setattr(probe.lock, "status", lambda conn: (None, NOW))
    monkeypatch.setattr(probe.rotation, "on_purpose", lambda conn: drained)
    view = probe.lock_host_view(Fleet.from_inventory(INV, partial=True))
    assert view.host == "lb1" and view.errors == [] and view.lease == (None, NOW) and view.drained == drained
    assert {n: s.status for n, s in view.servers.items()} == {"stream1": "UP", "stream2": "DRAIN", "stream3": "DOWN"}

    def malformed(conn):
        raise RoadieError("on-purpose drains on lb1: list failed: refused: /var/lib/roadie/drained.json is not "
                          "valid JSON (Expecting value: line 1 column 1 (char 0)); fix or remove it")

    monkeypatch.setattr(probe.rotation, "on_purpose", malformed)
    view = probe.lock_host_view(Fleet.from_inventory(INV, partial=True))
    assert view.servers and view.lease == (None, NOW) and view.drained is None
    assert len(view.errors) == 1 and view.errors[0].startswith("on-purpose drains on lb1: list failed: refused:")


def test_check_joins_haproxy_the_lease_and_the_drains_to_the_rows(monkeypatch):
    # stream2 DRAIN and drained on purpose, stream3 DOWN (from STAT); the probes answer as healthy hosts.
    from roadie.deploy.balancer import parse_stat

    servers = {s.server: s for s in parse_stat(STAT)}
    drained = {"stream2": Drained("stream2", "bob@laptop", "disk swap", NOW)}
    view = probe.LockHostView(host="lb1", servers=servers, lease=(None, NOW), drained=drained)
    monkeypatch.setattr(probe, "lock_host_view", lambda fleet: view)
    monkeypatch.setattr(probe, "probe", lambda host, inv, addresses: _row(
        host.name, haproxy=None, haproxy_weight=None, haproxy_check=None, sessions=None))
    found = report.check(INV)
    rows = {r.host: r for r in found.rows}
    assert (rows["stream2"].haproxy, rows["stream2"].haproxy_weight) == ("DRAIN", 0)
    assert rows["stream2"].drained_on_purpose == "drained by bob@laptop: disk swap"
    assert rows["stream1"].drained_on_purpose is None and rows["db1"].haproxy is None
    assert _texts(found.problems) == ["attention: stream3 is DOWN in HAProxy (DOWN, check L7STS)"]


# ------------------------------------------------------------------ the probe, run here with fake commands
FAKES = {
    "systemctl": 'echo active\n',
    # sudo -n -u postgres psql ... -c SQL: keep the SQL, answer as a primary with 2 replicas and 5 stream clients.
    "sudo": 'printf "%s\\n" "$@" > "$FAKE_LOG/sudo"\necho "f|128|2|5"\n',
    "redis-cli": ('printf "%s" "$REDISCLI_AUTH" > "$FAKE_LOG/auth"\n'
                  'case "$*" in\n'
                  '  *INFO*) printf "# Server\\r\\nrole:master\\r\\nused_memory:2048\\r\\n'
                  'connected_clients:4\\r\\n" ;;\n'
                  '  *"CLIENT LIST"*) printf "id=1 addr=10.0.0.11:5000 name=\\nid=2 addr=10.0.0.12:5001\\n'
                  'id=3 addr=127.0.0.1:6000\\nid=4 addr=[::1]:7000\\n" ;;\n'
                  'esac\n'),
}


def _probe(tmp_path: Path, args: dict, secret: str = "", **fakes: str) -> subprocess.CompletedProcess:
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir(exist_ok=True)
    log.mkdir(exist_ok=True)
    for name, body in {**FAKES, **fakes}.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_LOG": str(log)}
    return subprocess.run(["sh", "-c", remote.command("status_probe.py", json.dumps(args))], input=secret + "\n",
                          capture_output=True, text=True, env=env, timeout=60, check=False)


def test_probe_reports_a_database_and_cache_host_with_the_stream_hosts_connections(tmp_path):
    addresses = ["10.0.0.11", "10.0.0.12", "::1"]
    done = _probe(tmp_path, {"units": ["postgresql@15-main.service", "redis-server.service"], "stream": None,
                             "postgres": True, "redis": {"user": "admin", "port": 6379},
                             "stream_addresses": addresses}, secret="s3cret")  # noqa: S106 - a fake
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["hostname"] == os.uname().nodename and out["mem_total"] > 0 and out["disk_total"] > 0
    assert out["units"] == {"postgresql@15-main.service": "active", "redis-server.service": "active"}
    assert out["pg"] == {"role": "primary", "lag_bytes": 128, "replicas": 2, "stream_clients": 5}
    assert out["redis"] == {"role": "master", "used_memory": 2048, "clients": 4, "stream_clients": 3}
    assert (tmp_path / "log" / "auth").read_text() == "s3cret"      # the password through the environment
    argv = (tmp_path / "log" / "sudo").read_text().splitlines()
    assert argv[:4] == ["-n", "-u", "postgres", "psql"]
    assert "client_addr = ANY(ARRAY['10.0.0.11', '10.0.0.12', '::1']::inet[])" in argv[-1]


def test_probe_reads_the_release_from_the_current_link(tmp_path):
    current = tmp_path / "current"
    current.symlink_to("releases/20250101000000-abcdef1")
    done = _probe(tmp_path, {"units": ["stream.service"], "stream": str(current)})
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["release"] == "20250101000000-abcdef1" and "pg" not in out and "redis" not in out
    done = _probe(tmp_path, {"units": [], "stream": str(tmp_path / "missing")})
    assert json.loads(done.stdout)["release"] is None


def test_probe_refuses_an_address_that_is_not_an_ip_before_any_sql_is_run(tmp_path):
    done = _probe(tmp_path, {"units": [], "postgres": True, "stream_addresses": ["10.0.0.1'); DROP TABLE plays; --"]})
    assert done.returncode == answer.FAILED and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        """refused: stream address "10.0.0.1'); DROP TABLE plays; --" is not an IP address"""]
    assert not (tmp_path / "log" / "sudo").exists()
    with pytest.raises(ValueError):
        status_probe.postgres_sql(["10.0.0.1'); DROP TABLE plays; --"])


def test_probe_reports_a_psql_failure_as_that_part_s_error(tmp_path):
    failing = 'echo "psql: error: connection to server failed" >&2\nexit 2\n'
    done = _probe(tmp_path, {"units": [], "postgres": True, "stream_addresses": []}, sudo=failing)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["pg"] == {"error": "psql: error: connection to server failed"}


def test_probe_args_send_the_role_paths_and_the_stream_addresses_only_to_data_hosts():
    addresses = probe.stream_addresses(INV)
    assert addresses == ["10.0.0.11", "10.0.0.12", "10.0.0.13"]
    stream = probe._probe_args(INV.hosts["stream1"], redis_client.Admin("admin", 6379), addresses)
    assert stream["stream"] == "/srv/stream/current" and stream["stream_addresses"] == []
    db = probe._probe_args(INV.hosts["db1"], redis_client.Admin("admin", 6379), addresses)
    assert db["postgres"] is True and db["stream_addresses"] == addresses and db["stream"] is None
