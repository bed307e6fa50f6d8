"""Versioned SQL migrations: `migrations/NNNN_name.sql`, applied in order, each exactly once.

The runner holds a PostgreSQL advisory lock for the whole run, so two runners (two hosts, two
operators) never race: the second waits, then finds everything applied. Each migration runs in its
own transaction together with its row in `schema_migrations`, so a failing file leaves nothing
behind and is retried on the next run. A file changed after it was applied stops the runner.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg

from streamsvc.db import CONNECT_TIMEOUT

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
LOCK_KEY = 0x5354_524D_5356_4331  # "STRMSVC1": the advisory lock shared by migrate and seed
LOCK_TIMEOUT_S = 120
_FILE = re.compile(r"([0-9]{4})_([a-z0-9_]+)\.sql", re.ASCII)

SCHEMA_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


class MigrationError(Exception):
    """The migrations cannot be applied; the message is one line."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(directory: Path = MIGRATIONS) -> list[Migration]:
    """The migrations in `directory`, by version; MigrationError for a badly named or duplicate file."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE.fullmatch(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql (lower case)")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"{path.name}: version {version:04d} is used twice")
        found[version] = Migration(version, match.group(2), path.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


def migrate(dsn: str, directory: Path = MIGRATIONS, say: Callable[[str], None] = print,
            lock_timeout_s: int = LOCK_TIMEOUT_S) -> list[Migration]:
    """Apply the pending migrations; return those applied by this run."""
    migrations = discover(directory)
    applied_now: list[Migration] = []
    with psycopg.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                         application_name="streamsvc-migrate") as conn:
        conn.execute(f"SET lock_timeout = '{int(lock_timeout_s)}s'")
        try:
            conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        except psycopg.errors.LockNotAvailable:
            raise MigrationError(f"another migration run held the lock for over {lock_timeout_s} s") from None
        try:
            conn.execute(SCHEMA_MIGRATIONS)
            known = {row[0]: row[2] for row in conn.execute("SELECT version, name, checksum FROM schema_migrations")}
            for migration in migrations:
                if migration.version in known:
                    if known[migration.version] != migration.checksum:
                        raise MigrationError(f"{migration.label} was changed after it was applied; "
                                             "add a new migration instead")
                    continue
                try:
                    with conn.transaction():
                        conn.execute(migration.sql)  # no parameters: simple protocol, several statements
                        conn.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                                     (migration.version, migration.name, migration.checksum))
                except psycopg.errors.Error as exc:
                    if isinstance(exc, psycopg.OperationalError) and conn.broken:
                        raise
                    detail = " ".join(str(exc).split())
                    raise MigrationError(f"{migration.label} failed, nothing of it was applied: {detail}") from None
                applied_now.append(migration)
                say(f"migrate: applied {migration.label}")
            newest = max((m.version for m in migrations), default=0)
            newer = sorted(v for v in known if v > newest)
            if newer:
                say(f"migrate: the database also has {', '.join(f'{v:04d}' for v in newer)}, "
                    "applied by a newer release")
            if not applied_now:
                say(f"migrate: up to date ({len(migrations)} migrations)")
        finally:
            if not conn.broken:
                conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    return applied_now
