"""The data tier after site.yml on the lab: replication, logins, firewall, Redis ACLs, SSH, backups."""

import hashlib
import shlex
import subprocess
import sys
import time
import uuid

import pytest

from roadie.core.paths import ROOT
from roadie.lab import provision
from tests.lab.hosts import psql_postgres, run_with_secret

DB1, DB2, CACHE1 = "10.87.0.20", "10.87.0.21", "10.87.0.30"
PSQL_APP = f"psql -X -At -h {DB1} -U stream -d stream"

# The stream service's key prefixes and commands, which the redis role's default ACL grants the app user.
if str(ROOT / "app") not in sys.path:
    sys.path.insert(0, str(ROOT / "app"))
from streamsvc import cache as streamsvc_cache  # noqa: E402 - needs app/ on sys.path


@pytest.fixture(scope="module")
def probe_table(provisioned, conns):
    psql_postgres(conns("db1"), "CREATE TABLE IF NOT EXISTS roadie_lab_probe (id serial PRIMARY KEY, token text)")
    return "roadie_lab_probe"


def test_row_written_on_db1_is_readable_on_db2_within_1_s(conns, probe_table):
    token = uuid.uuid4().hex
    psql_postgres(conns("db1"), f"INSERT INTO {probe_table} (token) VALUES ('{token}')")
    written = time.monotonic()
    seen = None
    while time.monotonic() - written < 1.0:
        if psql_postgres(conns("db2"), f"SELECT count(*) FROM {probe_table} WHERE token = '{token}'") == "1":
            seen = time.monotonic() - written
            break
    assert seen is not None, "row not visible on db2 within 1 s"
    assert psql_postgres(conns("db2"), "SELECT pg_is_in_recovery()") == "t"
    assert psql_postgres(conns("db1"), "SELECT state FROM pg_stat_replication", db="postgres") == "streaming"


def test_stream_host_logs_in_to_postgresql_with_the_app_password(conns, secrets, provisioned):
    result = run_with_secret(conns("stream1"), f"{PSQL_APP} -c 'SELECT current_user'", "PGPASSWORD",
                             secrets["vault_postgresql_app_password"])
    assert result.exited == 0, result.stderr
    assert result.stdout.strip() == "stream"


def test_wrong_postgresql_password_is_refused(conns, provisioned):
    result = run_with_secret(conns("stream1"), f"{PSQL_APP} -c 'SELECT 1'", "PGPASSWORD", "not-the-password")
    assert result.exited != 0
    assert "password authentication failed" in result.stderr


@pytest.mark.parametrize("source", ["lb1", "cache1"])
def test_only_stream_hosts_and_the_replica_reach_postgresql(conns, provisioned, source):
    probe = f"timeout 3 bash -c '</dev/tcp/{DB1}/5432'"
    assert conns(source).run(probe, hide=True, warn=True, in_stream=False).exited != 0
    assert conns("stream1").run(probe, hide=True, warn=True, in_stream=False).exited == 0


def _redis(conns, user: str | None, password: str | None, command: str):
    conn = conns("stream1")
    if user is None:
        return conn.run(f"redis-cli --no-auth-warning -h {CACHE1} {command}", hide=True, warn=True, in_stream=False)
    return run_with_secret(conn, f"redis-cli --no-auth-warning -h {CACHE1} --user {user} {command}",
                           "REDISCLI_AUTH", password)


def test_redis_refuses_unauthenticated_commands(conns, provisioned):
    out = _redis(conns, None, None, "GET anykey")
    assert "NOAUTH" in out.stdout + out.stderr


def _redis_reply(conns, user: str, password: str, *argv: str) -> str:
    """One redis-cli command on cache1, from stream1; the reply (or error) as redis-cli prints it."""
    out = _redis(conns, user, password, shlex.join(argv))
    return (out.stdout + out.stderr).strip()


@pytest.fixture
def redis_probe_keys(conns, secrets, provisioned):
    """One of the app's catalogue keys and one key outside its prefixes, both holding "before" (set by admin)."""
    admin = secrets["vault_redis_admin_password"]
    token = uuid.uuid4().hex[:12]
    own, outside = f"{streamsvc_cache.KEY_PREFIX}lab-acl-probe-{token}", f"roadie:lab-acl-probe-{token}"
    for key in (own, outside):
        assert _redis_reply(conns, "admin", admin, "SET", key, "before", "EX", "300") == "OK"
    yield own, outside
    _redis_reply(conns, "admin", admin, "DEL", own, outside)


def test_redis_app_user_can_do_what_the_stream_service_does(conns, secrets, redis_probe_keys):
    app, own = secrets["vault_redis_app_password"], redis_probe_keys[0]
    plays = f"{streamsvc_cache.PLAYS_PREFIX}lab-probe"
    assert _redis_reply(conns, "app", app, "PING") == "PONG"
    assert _redis_reply(conns, "app", app, "GET", own) == "before"
    assert _redis_reply(conns, "app", app, "SET", own, "after", "EX", "60") == "OK"
    assert _redis_reply(conns, "app", app, "GET", own) == "after"
    assert _redis_reply(conns, "app", app, "SET", plays, "1") == "OK"
    assert _redis_reply(conns, "app", app, "INCRBY", plays, "1") == "2"  # what redis-py sends for INCR


def test_redis_app_user_is_refused_scripts_configuration_key_listing_and_flushes(conns, secrets, redis_probe_keys):
    app, admin, own = secrets["vault_redis_app_password"], secrets["vault_redis_admin_password"], redis_probe_keys[0]
    script = "return redis.call('SET', KEYS[1], 'script')"
    policy = _redis_reply(conns, "admin", admin, "CONFIG", "GET", "maxmemory-policy").split()
    attempts = [
        ("EVAL", script, "1", own),
        # Allowed, this would answer NOSCRIPT (the script is not loaded); refused, NOPERM comes first.
        ("EVALSHA", hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest(), "1", own),
        ("FCALL", "roadie_lab_probe", "1", own),
        ("FUNCTION", "FLUSH"),
        ("SCRIPT", "FLUSH"),
        ("SCRIPT", "LOAD", script),
        ("CONFIG", "GET", "maxmemory"),
        ("CONFIG", "SET", "maxmemory-policy", "noeviction"),
        ("KEYS", "*"),
        ("SCAN", "0"),
        ("FLUSHALL",),
        ("FLUSHDB",),
        ("DEL", own),
        ("PUBLISH", "roadie-lab-probe", "x"),
    ]
    replies = {shlex.join(argv): _redis_reply(conns, "app", app, *argv) for argv in attempts}
    assert {name: reply for name, reply in replies.items() if not reply.startswith("NOPERM")} == {}
    assert _redis_reply(conns, "admin", admin, "MGET", *redis_probe_keys).split() == ["before", "before"]
    assert _redis_reply(conns, "admin", admin, "CONFIG", "GET", "maxmemory-policy").split() == policy
    assert _redis_reply(conns, "admin", admin, "CONFIG", "GET", "appendonly").split() == ["appendonly", "yes"]


def test_redis_app_user_is_refused_debug_by_its_acl_not_only_by_the_server_setting(conns, secrets, provisioned):
    """DEBUG is off for every user on cache1; ACL DRYRUN shows the app user's rules refuse it as well."""
    app, admin = secrets["vault_redis_app_password"], secrets["vault_redis_admin_password"]
    assert _redis_reply(conns, "app", app, "DEBUG", "SLEEP", "0").startswith("ERR DEBUG command not allowed")
    dry_run = _redis_reply(conns, "admin", admin, "ACL", "DRYRUN", "app", "DEBUG", "SLEEP", "0")
    assert dry_run == "This user has no permissions to run the 'debug' command"
    own = f"{streamsvc_cache.KEY_PREFIX}lab-acl-probe"
    assert _redis_reply(conns, "admin", admin, "ACL", "DRYRUN", "app", "GET", own) == "OK"  # the dry run answers


def test_redis_app_user_cannot_read_or_write_keys_outside_the_app_prefixes(conns, secrets, redis_probe_keys):
    app, outside = secrets["vault_redis_app_password"], redis_probe_keys[1]
    other_version = streamsvc_cache.KEY_PREFIX.split(":")[0] + ":older:lab-acl-probe"
    replies = [_redis_reply(conns, "app", app, *argv) for argv in (
        ("GET", outside), ("SET", outside, "after"), ("INCRBY", outside, "1"), ("SET", other_version, "x"))]
    assert [r for r in replies if not r.startswith("NOPERM")] == []
    admin = secrets["vault_redis_admin_password"]
    assert _redis_reply(conns, "admin", admin, "GET", outside) == "before"
    assert _redis_reply(conns, "admin", admin, "EXISTS", other_version) == "0"


def test_redis_wrong_password_is_refused(conns, provisioned):
    out = _redis(conns, "app", "not-the-password", "PING")
    assert "WRONGPASS" in out.stdout + out.stderr


@pytest.mark.parametrize("host", ["lb1", "stream1", "db1", "cache1"])
def test_password_ssh_login_is_refused(lab_inventory, provisioned, host):
    h = lab_inventory.hosts[host]
    result = subprocess.run(
        ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={h.known_hosts}",
         "-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password,keyboard-interactive",
         "-o", "ControlMaster=no", "-o", "ControlPath=none", f"deploy@{h.address}", "true"],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 255
    assert "Permission denied (publickey)" in result.stderr


def test_base_backup_restores_into_a_scratch_cluster_with_the_same_rows(conns, probe_table):
    db1 = conns("db1")
    psql_postgres(db1, f"INSERT INTO {probe_table} (token) SELECT md5(g::text) FROM generate_series(1, 500) g")
    expected = psql_postgres(db1, f"SELECT count(*) FROM {probe_table}")
    backup = db1.run("systemctl start --wait pg-base-backup.service", hide=True, warn=True, in_stream=False)
    assert backup.exited == 0, backup.stderr
    restored = db1.run(f"pg-restore-check -i -d stream 'SELECT count(*) FROM {probe_table}'", hide=True, warn=True,
                       in_stream=False)
    assert restored.exited == 0, restored.stderr
    assert restored.stdout.strip() == expected


def test_check_mode_on_the_provisioned_lab_passes_and_changes_nothing(provisioned):
    run = provision.run("site", "lab", check=True, echo=False)
    assert run.ok, run.output[-3000:]
    assert run.changed_hosts() == {}


def test_second_site_run_changes_nothing(provisioned, site_rerun):
    run = site_rerun.run
    assert run.ok, run.output[-3000:]
    assert run.changed_hosts() == {}, f"changed on rerun: {run.changed_hosts()} (see logs/lab-site-rerun.log)"
    assert set(run.recap) == set(provisioned.recap)
