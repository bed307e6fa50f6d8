"""PostgreSQL access: a small pool of autocommit connections that survives database restarts.

Every connection is opened with a short connect timeout, so a dead or unreachable database turns
into an error in about CONNECT_TIMEOUT seconds (per host listed in the DSN) instead of a hang.
An idle connection is checked with one round trip before it is handed out; a dead one is closed
and replaced, so the first request after a restart or failover already gets a working connection.
Connections never outnumber the requests in flight; at most `max_idle` are kept between requests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row

CONNECT_TIMEOUT = 2  # seconds; libpq's minimum useful value is 2
STATEMENT_TIMEOUT_MS = 5000

Unavailable = psycopg.OperationalError
"""Raised when the database cannot be reached or the connection broke: answer 503."""


class KeyReused(Exception):
    """An idempotency key already stored for a different play: answer 409."""


def retryable(exc: BaseException) -> bool:
    """A failure a write may be retried after: no connection, a broken one, or a server going away or
    read-only (a failover). A statement timeout is not: the statement ran and may run again as long."""
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return False
    return isinstance(exc, psycopg.OperationalError | psycopg.errors.ReadOnlySqlTransaction)


class Database:
    """Connections to one PostgreSQL database (DSN), reused across requests and threads."""

    def __init__(self, dsn: str, max_idle: int = 4) -> None:
        self._dsn = dsn
        self._max_idle = max_idle
        self._idle: list[psycopg.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(
            self._dsn,
            autocommit=True,
            row_factory=dict_row,
            connect_timeout=CONNECT_TIMEOUT,
            application_name="streamsvc",
            options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
            # Fail over quickly when a host vanishes instead of waiting for TCP's retransmissions.
            tcp_user_timeout=CONNECT_TIMEOUT * 2000,
            keepalives_idle=30,
        )

    @staticmethod
    def _alive(conn: psycopg.Connection) -> bool:
        if conn.closed or conn.broken:
            return False
        try:
            conn.execute("SELECT 1")
        except psycopg.Error:
            conn.close()
            return False
        return True

    def _checkout(self) -> psycopg.Connection:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._connect()
            if self._alive(conn):
                return conn

    def _checkin(self, conn: psycopg.Connection) -> None:
        reusable = (not conn.closed and not conn.broken
                    and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE)
        if reusable:
            with self._lock:
                if not self._closed and len(self._idle) < self._max_idle:
                    self._idle.append(conn)
                    return
        conn.close()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A connection in autocommit mode, rows as dicts; use `with conn.transaction():` to write."""
        conn = self._checkout()
        try:
            yield conn
        finally:
            self._checkin(conn)

    def ping(self) -> None:
        """Raise unless the database answers SELECT 1."""
        with self.connection() as conn:
            conn.execute("SELECT 1")

    def all_tracks(self) -> list[dict[str, Any]]:
        with self.connection() as conn:
            return conn.execute(
                "SELECT id, title, artist, duration_ms, audio_file FROM tracks ORDER BY id LIMIT 1000").fetchall()

    def track(self, track_id: int) -> dict[str, Any] | None:
        with self.connection() as conn:
            return conn.execute(
                "SELECT id, title, artist, duration_ms, audio_file FROM tracks WHERE id = %s", (track_id,)
            ).fetchone()

    def record_play(self, track_id: int, listener_id: str, request_key: str, *, retry_for: float = 0.0,
                    on_retry: Callable[[int, BaseException], None] | None = None) -> dict[str, Any] | None:
        """Insert a play once per `request_key`; None when the track does not exist.

        A connection failure is retried for up to `retry_for` seconds (a failover: the old primary is
        gone, the new one not promoted yet; the DSN's host list and target_session_attrs find it).
        The key makes the retry safe: when a commit was sent but its answer lost, the retry finds the
        stored row instead of inserting a second one. The row carries `replayed` (True when it was
        stored before this call) and `attempts`. KeyReused when the key belongs to another play.
        """
        deadline = time.monotonic() + retry_for
        attempt = 0
        while True:
            attempt += 1
            try:
                row = self._insert_play(track_id, listener_id, request_key)
            except psycopg.errors.ForeignKeyViolation:
                return None
            except psycopg.Error as exc:
                if not retryable(exc) or time.monotonic() >= deadline:
                    raise
                if on_retry is not None:
                    on_retry(attempt, exc)
                time.sleep(min(0.1 * 2 ** (attempt - 1), 1.0, max(0.0, deadline - time.monotonic())))
                continue
            if (row["track_id"], row["listener_id"]) != (track_id, listener_id):
                raise KeyReused(request_key)
            return {**row, "attempts": attempt}

    def _insert_play(self, track_id: int, listener_id: str, request_key: str) -> dict[str, Any]:
        with self.connection() as conn:
            try:
                row = conn.execute(
                    "INSERT INTO plays (track_id, listener_id, request_key) VALUES (%s, %s, %s) "
                    "ON CONFLICT (request_key) DO NOTHING "
                    "RETURNING id, track_id, listener_id, played_at, false AS replayed",
                    (track_id, listener_id, request_key),
                ).fetchone()
            except psycopg.errors.ReadOnlySqlTransaction:
                conn.close()  # a server that is (now) a standby: never pool this connection again
                raise
            if row is None:
                row = conn.execute(
                    "SELECT id, track_id, listener_id, played_at, true AS replayed FROM plays "
                    "WHERE request_key = %s", (request_key,)).fetchone()
            return row

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
