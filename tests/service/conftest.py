"""Session fixtures for the stream service tests: a real PostgreSQL 15 and a real Redis on loopback
(tests/service/servers.py), the service's environment with the schema migrated and the catalogue seeded,
and its media. The servers are stopped and removed when the session ends. Needs the Debian packages
postgresql-15 and redis-server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.service.servers import APP_DIR, DB_PASSWORD, PG_BIN, REDIS_SERVER, SUPER_PASSWORD, Postgres, Redis, free_port

sys.path.insert(0, str(APP_DIR))

from streamsvc import migrate, seed  # needs APP_DIR on sys.path

# Hypothesis must not fail a test on how long an example took (no wall-clock assertions).
settings.register_profile("streamsvc", deadline=None, max_examples=200)
settings.load_profile("streamsvc")


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    if not (PG_BIN / "postgres").exists():
        pytest.fail("PostgreSQL 15 is not installed (Debian package postgresql-15)")
    base = Path(tempfile.mkdtemp(prefix="streamsvc-pg-"))
    try:
        os.chmod(base, 0o755)  # noqa: S103 - the postgres user must reach its data directory
        (base / "sock").mkdir()
        (base / "pwfile").write_text(SUPER_PASSWORD + "\n")
        shutil.chown(base, "postgres", "postgres")
        shutil.chown(base / "sock", "postgres", "postgres")
        shutil.chown(base / "pwfile", "postgres", "postgres")
        os.chmod(base / "pwfile", 0o600)
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(base / "data"),
                        "-U", "postgres", "--pwfile", str(base / "pwfile"), "--auth-local=trust",
                        "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"],
                       cwd=base, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        pg = Postgres(base, free_port())
        pg.start()
        try:
            pg.admin(f"CREATE ROLE stream LOGIN PASSWORD '{DB_PASSWORD}'")
            pg.admin("CREATE DATABASE stream OWNER stream")
            yield pg
        finally:
            pg.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Redis]:
    if not os.path.exists(REDIS_SERVER):
        pytest.fail("redis-server is not installed (Debian package redis-server)")
    base = Path(tempfile.mkdtemp(prefix="streamsvc-redis-"))
    server = Redis(base, free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("media")
    seed.write_media(path)
    return path


@pytest.fixture(scope="session")
def service_env(postgres, redis_server, media_dir) -> dict[str, str]:
    """The service's environment, with the schema migrated and the catalogue seeded."""
    migrate.migrate(postgres.url(), say=lambda _line: None)
    seed.seed_database(postgres.url())
    return {
        "STREAM_DATABASE_URL": postgres.url(),
        "STREAM_REDIS_URL": redis_server.url(),
        "STREAM_MEDIA_DIR": str(media_dir),
        "STREAM_RELEASE_ID": "20250101000000-abcdef1",
        "STREAM_CACHE_TTL": "300",
        # Tests that stop the database expect a quick 503; the retry has its own tests.
        "STREAM_WRITE_RETRY_SECONDS": "1",
    }
