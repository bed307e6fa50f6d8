"""Redis: the catalogue cache (cache-aside, with a TTL) and the play counters.

Redis is never required to answer a request: every call here returns None / False on a Redis error
and logs it (at most once every LOG_EVERY seconds, so a dead Redis does not flood the log).
Keys: `tracks:v1:all`, `tracks:v1:<id>` (JSON, expire after the TTL) and `plays:<track_id>`
(INCR counters). The Redis user needs no more than `~tracks:v1:* ~plays:* resetchannels -@all +ping +get
+set +incrby` (KEY_PREFIXES and COMMANDS below): redis-py sends INCR as INCRBY, and on connect only
HELLO 3 with AUTH, which Redis lets every user send.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from streamsvc import metrics

log = logging.getLogger("streamsvc.cache")

TIMEOUT = 1.0  # seconds, to connect and for each reply
LOG_EVERY = 30.0
KEY_PREFIX = "tracks:v1:"  # bump the version when the cached shape changes
PLAYS_PREFIX = "plays:"
# Every key the service touches starts with one of these, and it sends no other command once connected.
# The redis role's default ACL for the app user (redis_app_acl_rules in roles/redis/defaults/main.yml)
# grants exactly ~<prefix>* and +<command> for these; tests/unit/test_redis_acl.py fails when they differ.
# Bumping KEY_PREFIX therefore means changing the role's rules too.
KEY_PREFIXES = (KEY_PREFIX, PLAYS_PREFIX)
COMMANDS = ("ping", "get", "set", "incrby")


def client(url: str) -> redis.Redis:
    """A Redis client with short timeouts and one immediate retry (a reconnect after a Redis restart)."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=TIMEOUT,
        socket_timeout=TIMEOUT,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
        driver_info=None,  # no CLIENT SETINFO on connect: HELLO with AUTH is the only handshake command
    )


class Cache:
    """The service's view of Redis; `scrub` hides secrets in logged errors."""

    def __init__(self, conn: redis.Redis, ttl: int, scrub: Callable[[str], str] = str) -> None:
        self._redis = conn
        self._ttl = ttl
        self._scrub = scrub
        self._last_log = float("-inf")
        self._log_lock = threading.Lock()

    def _failed(self, action: str, exc: Exception) -> None:
        metrics.DEPENDENCY_ERRORS.labels(dependency="cache").inc()
        with self._log_lock:
            now = time.monotonic()
            if now - self._last_log < LOG_EVERY:
                return
            self._last_log = now
        log.warning("redis %s failed, serving without the cache: %s", action, self._scrub(" ".join(str(exc).split())))

    def ping(self) -> None:
        """Raise unless Redis answers PING."""
        self._redis.ping()

    def get(self, key: str) -> Any | None:
        """The cached JSON value under KEY_PREFIX + key, or None (miss, disabled or Redis down)."""
        if self._ttl <= 0:
            return None
        try:
            raw = self._redis.get(KEY_PREFIX + key)
        except redis.RedisError as exc:
            self._failed("GET", exc)
            return None
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return None

    def put(self, key: str, value: Any) -> None:
        """Cache a JSON-serialisable value for the TTL; errors are logged, not raised."""
        if self._ttl <= 0:
            return
        try:
            self._redis.set(KEY_PREFIX + key, json.dumps(value, separators=(",", ":")), ex=self._ttl)
        except redis.RedisError as exc:
            self._failed("SET", exc)

    def count_play(self, track_id: int) -> bool:
        """INCR plays:<track_id>; False when Redis did not take it."""
        try:
            self._redis.incr(f"{PLAYS_PREFIX}{track_id}")
        except redis.RedisError as exc:
            self._failed("INCR", exc)
            return False
        return True

    def close(self) -> None:
        self._redis.close()
