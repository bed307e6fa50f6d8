"""The app's Redis user under the redis role's default ACL, on a real redis-server: what it may and may not do.

The server loads the role's users.acl (see conftest.py). Refusals are proved by state as well as by NOPERM:
the script that was refused did not write its key, the refused FLUSHALL left the keys, CONFIG kept its value.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
import redis
from streamsvc import cache
from streamsvc.wsgi import create_app

from tests.service.servers import REDIS_APP_USER, REDIS_DEFAULTS, Redis
from tests.service.wsgi_client import call

SET_SCRIPT = "return redis.call('SET', KEYS[1], ARGV[1])"
FUNCTION_LIBRARY = ("#!lua name=roadie_acl_probe\n"
                    "redis.register_function('roadie_acl_probe_set', "
                    "function(keys, args) return redis.call('SET', keys[1], args[1]) end)")
# Redis lets every user send these whatever its rules (they carry the login); redis-py sends HELLO 3 with AUTH.
HANDSHAKE = {"hello", "auth"}


@pytest.fixture
def admin(redis_server: Redis) -> redis.Redis:
    conn = redis_server.admin()
    yield conn
    conn.close()


@pytest.fixture
def app_user(redis_server: Redis) -> redis.Redis:
    conn = redis_server.app_client()
    yield conn
    conn.close()


@pytest.fixture
def own_key(admin) -> str:
    """One of the app's catalogue keys, holding "before"."""
    key = f"{cache.KEY_PREFIX}acl-probe-{uuid.uuid4().hex}"
    admin.set(key, "before")
    yield key
    admin.delete(key)


@pytest.fixture
def outside_key(admin) -> str:
    """A key outside the app's prefixes, holding "before"."""
    key = f"roadie:acl-probe-{uuid.uuid4().hex}"
    admin.set(key, "before")
    yield key
    admin.delete(key)


def test_the_server_runs_the_role_default_rules_for_the_app_user(admin):
    """The service tests' Redis gives the app user the role's rules, not rules of its own."""
    probe = f"roadie-acl-probe-{uuid.uuid4().hex[:8]}"
    admin.acl_setuser(probe, enabled=False, reset=True)
    try:
        admin.execute_command("ACL", "SETUSER", probe, *REDIS_DEFAULTS["redis_app_acl_rules"].split())
        expected, live = admin.acl_getuser(probe), admin.acl_getuser(REDIS_APP_USER)
    finally:
        admin.acl_deluser(probe)
    for field in ("keys", "channels", "commands", "selectors"):
        assert live[field] == expected[field], field
    assert sorted(live["keys"]) == sorted(f"~{prefix}*" for prefix in cache.KEY_PREFIXES)
    assert live["channels"] == []


def _monitored_commands(admin, redis_server: Redis, drive: Callable[[], None]) -> list[str]:
    """The commands the app user's connections sent while `drive()` ran, lower-case, in order."""
    marker = f"roadie-acl-probe-{uuid.uuid4().hex}"
    with redis_server.admin() as watcher, watcher.monitor() as monitor:
        drive()
        app_addresses = {f"{c['addr']}" for c in admin.client_list() if c["user"] == REDIS_APP_USER}
        admin.echo(marker)
        seen = []
        while True:
            entry = monitor.next_command()
            if entry["command"] == f"ECHO {marker}":
                break
            if f"{entry['client_address']}:{entry['client_port']}" in app_addresses:
                seen.append(entry["command"].split()[0].lower())
    return seen


def test_the_service_sends_exactly_the_commands_the_acl_grants(service_env, redis_server, admin):
    """Every route that touches Redis, through a fresh app: no command outside COMMANDS, none of them unused."""
    admin.delete(f"{cache.KEY_PREFIX}all", f"{cache.KEY_PREFIX}3")
    admin.acl_log_reset()
    app = create_app(service_env)

    def drive() -> None:
        assert call(app, "GET", "/healthz").json()["cache"] == "ok"              # PING
        assert call(app, "GET", "/tracks").status == 200                         # GET miss, SET
        assert call(app, "GET", "/tracks").status == 200                         # GET hit
        assert call(app, "GET", "/tracks/3").status == 200                       # GET miss, SET
        assert call(app, "POST", "/plays", body=b'{"track_id": 3, "listener_id": "acl"}').status == 201  # INCRBY

    try:
        sent = _monitored_commands(admin, redis_server, drive)
    finally:
        app.close()
    assert set(sent) - HANDSHAKE == set(cache.COMMANDS), sent
    assert admin.ttl(f"{cache.KEY_PREFIX}all") > 0 and admin.ttl(f"{cache.KEY_PREFIX}3") > 0
    assert [e for e in admin.acl_log() if e["username"] == REDIS_APP_USER] == []


def test_the_app_user_reads_and_writes_its_own_keys(app_user, admin, own_key):
    assert app_user.ping() is True
    assert app_user.get(own_key) == b"before"
    assert app_user.set(own_key, "after", ex=60) is True
    plays = f"{cache.PLAYS_PREFIX}acl-probe-{uuid.uuid4().hex}"
    try:
        assert app_user.incr(plays) == 1 and app_user.incr(plays) == 2
        assert admin.get(own_key) == b"after" and 0 < admin.ttl(own_key) <= 60
        assert admin.get(plays) == b"2"
    finally:
        admin.delete(plays)


def test_the_app_user_cannot_run_a_script(app_user, admin, own_key):
    """EVAL on one of its own keys: the script never runs (no busy loop, no write)."""
    with pytest.raises(redis.exceptions.NoPermissionError):
        app_user.eval(SET_SCRIPT, 1, own_key, "eval")
    assert admin.get(own_key) == b"before"


def test_the_app_user_cannot_run_a_loaded_script(app_user, admin, own_key):
    sha = admin.script_load(SET_SCRIPT)
    with pytest.raises(redis.exceptions.NoPermissionError):
        app_user.evalsha(sha, 1, own_key, "evalsha")
    assert admin.get(own_key) == b"before"
    assert admin.evalsha(sha, 1, own_key, "admin") == b"OK"  # the script itself works


def test_the_app_user_cannot_call_a_function(app_user, admin, own_key):
    admin.function_load(FUNCTION_LIBRARY, replace=True)
    try:
        with pytest.raises(redis.exceptions.NoPermissionError):
            app_user.fcall("roadie_acl_probe_set", 1, own_key, "fcall")
        with pytest.raises(redis.exceptions.NoPermissionError):
            app_user.function_flush()
        assert admin.get(own_key) == b"before"
        assert admin.fcall("roadie_acl_probe_set", 1, own_key, "admin") == b"OK"  # the function itself works
    finally:
        admin.function_delete("roadie_acl_probe")


def test_the_app_user_cannot_load_or_flush_scripts(app_user, admin):
    sha = admin.script_load(SET_SCRIPT)
    with pytest.raises(redis.exceptions.NoPermissionError):
        app_user.script_flush()
    with pytest.raises(redis.exceptions.NoPermissionError):
        app_user.script_load("return 1")
    assert admin.script_exists(sha) == [True]


def test_the_app_user_cannot_read_or_change_the_configuration(app_user, admin):
    policy = admin.config_get("maxmemory-policy")["maxmemory-policy"]
    other = "allkeys-lru" if policy != "allkeys-lru" else "noeviction"
    with pytest.raises(redis.exceptions.NoPermissionError):
        app_user.config_get("maxmemory")
    with pytest.raises(redis.exceptions.NoPermissionError):
        app_user.config_set("maxmemory-policy", other)
    assert admin.config_get("maxmemory-policy")["maxmemory-policy"] == policy


def test_the_app_user_cannot_list_keys(app_user, admin, own_key):
    assert own_key.encode() in admin.keys(f"{cache.KEY_PREFIX}*")  # there is something to list
    with pytest.raises(redis.exceptions.NoPermissionError):
        app_user.keys("*")
    with pytest.raises(redis.exceptions.NoPermissionError):
        app_user.scan(0)


@pytest.mark.parametrize("flush", ["flushall", "flushdb"])
def test_the_app_user_cannot_flush(app_user, admin, own_key, outside_key, flush):
    with pytest.raises(redis.exceptions.NoPermissionError):
        getattr(app_user, flush)()
    assert admin.mget(own_key, outside_key) == [b"before", b"before"]


def test_the_app_user_cannot_debug(app_user, admin):
    """The server allows DEBUG from loopback (admin's works), so the refusal is the ACL's."""
    assert admin.execute_command("DEBUG", "SLEEP", "0")
    with pytest.raises(redis.exceptions.NoPermissionError):
        app_user.execute_command("DEBUG", "SLEEP", "0")


def test_the_app_user_cannot_touch_a_key_outside_its_prefixes(app_user, admin, outside_key):
    with pytest.raises(redis.exceptions.NoPermissionError):
        app_user.get(outside_key)
    with pytest.raises(redis.exceptions.NoPermissionError):
        app_user.set(outside_key, "after")
    with pytest.raises(redis.exceptions.NoPermissionError):
        app_user.incr(outside_key)
    assert admin.get(outside_key) == b"before"


def test_the_app_user_cannot_touch_another_catalogue_version(app_user, admin):
    """The rules grant the current catalogue prefix, not every tracks:* key."""
    other = cache.KEY_PREFIX.split(":")[0] + ":older:all"
    with pytest.raises(redis.exceptions.NoPermissionError):
        app_user.set(other, "x")
    assert admin.exists(other) == 0


def test_the_app_user_cannot_delete_or_publish(app_user, admin, own_key):
    with pytest.raises(redis.exceptions.NoPermissionError):
        app_user.delete(own_key)
    with pytest.raises(redis.exceptions.NoPermissionError):
        app_user.publish("roadie-acl-probe", "x")
    assert admin.get(own_key) == b"before"
