"""A real PostgreSQL 15 and a real Redis on loopback for the stream service tests.

Both run from temporary directories on free ports of 127.0.0.1 (never 5432 / 6379), as their own
processes: no systemd unit, no default cluster. They are stopped and removed when the session ends.
Redis loads the redis role's own users.acl template, rendered with the role's defaults (user names and
the app user's ACL rules) and the throw-away passwords below, so the service runs under the ACL a
provisioned host gives it. Needs the Debian packages postgresql-15 and redis-server.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import jinja2
import psycopg
import pytest
import redis
import yaml
from hypothesis import settings

ROOT = Path(__file__).resolve().parents[2]
APP_DIR = ROOT / "app"
sys.path.insert(0, str(APP_DIR))

from streamsvc import migrate, seed  # noqa: E402 - needs APP_DIR on sys.path

# Hypothesis must not fail a test on how long an example took (no wall-clock assertions).
settings.register_profile("streamsvc", deadline=None, max_examples=200)
settings.load_profile("streamsvc")

PG_BIN = Path("/usr/lib/postgresql/15/bin")
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
# Passwords with characters that must be percent-encoded in a URL: redaction and decoding are tested.
# Throw-away credentials of the throw-away servers below.
DB_PASSWORD = "pg-Pa55:w@rd/x"  # noqa: S105
REDIS_PASSWORD = "rd-Pa55:w@rd/y"  # noqa: S105
REDIS_ADMIN_PASSWORD = "admin-Pa55"  # noqa: S105
REDIS_REPLICA_PASSWORD = "replica-Pa55"  # noqa: S105
SUPER_PASSWORD = "super-Pa55"  # noqa: S105

REDIS_ROLE = ROOT / "roles" / "redis"
REDIS_DEFAULTS = yaml.safe_load((REDIS_ROLE / "defaults" / "main.yml").read_text())
REDIS_APP_USER = REDIS_DEFAULTS["redis_app_user"]
REDIS_ADMIN_USER = REDIS_DEFAULTS["redis_admin_user"]


def render_users_acl() -> str:
    """The redis role's users.acl: its template, its defaults, this module's throw-away passwords."""
    env = jinja2.Environment(  # noqa: S701 - an ACL file, not HTML
        undefined=jinja2.StrictUndefined, trim_blocks=True, keep_trailing_newline=True)
    # Ansible's hash filter, the one Ansible filter the template uses.
    env.filters["hash"] = lambda value, algorithm: hashlib.new(algorithm, value.encode()).hexdigest()
    template = env.from_string((REDIS_ROLE / "templates" / "etc" / "redis" / "users.acl.j2").read_text())
    return template.render({**REDIS_DEFAULTS, "redis_app_password": REDIS_PASSWORD,
                            "redis_admin_password": REDIS_ADMIN_PASSWORD,
                            "redis_replica_password": REDIS_REPLICA_PASSWORD})


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (never 5432 or 6379)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in (5432, 6379):
            return port


def wait_for(check, what: str, attempts: int = 200, pause: float = 0.05) -> None:
    """Poll `check()` until it returns true; fail the test after `attempts` tries."""
    for _ in range(attempts):
        try:
            if check():
                return
        except Exception:  # noqa: S110 - not up yet
            pass
        time.sleep(pause)
    pytest.fail(f"{what} did not come up")


@dataclass
class Postgres:
    """A throw-away PostgreSQL cluster run by the postgres user."""

    base: Path
    port: int

    @property
    def data(self) -> Path:
        return self.base / "data"

    def url(self, user: str = "stream", password: str = DB_PASSWORD, db: str = "stream") -> str:
        return f"postgresql://{user}:{quote(password, safe='')}@127.0.0.1:{self.port}/{db}"

    @property
    def admin_url(self) -> str:
        return self.url("postgres", SUPER_PASSWORD, "postgres")

    def _pg_ctl(self, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(self.data), *args],
                       cwd=self.base, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.base / 'sock'} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c shared_buffers=16MB -c max_connections=60")
        self._pg_ctl("-l", str(self.base / "postgres.log"), "-w", "-t", "30", "-o", options, "start")

    def stop(self) -> None:
        self._pg_ctl("-m", "fast", "-w", "stop")

    def admin(self, sql: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql)


@dataclass
class Redis:
    """A throw-away redis-server with the redis role's ACL users: the app's (its default rules) and admin."""

    base: Path
    port: int
    process: subprocess.Popen | None = None

    def url(self, user: str = REDIS_APP_USER, password: str = REDIS_PASSWORD) -> str:
        return f"redis://{user}:{quote(password, safe='')}@127.0.0.1:{self.port}/0"

    def admin(self) -> redis.Redis:
        return redis.Redis.from_url(self.url(REDIS_ADMIN_USER, REDIS_ADMIN_PASSWORD), socket_timeout=2)

    def app_client(self) -> redis.Redis:
        """A plain client logged in as the app user (no retry: every refusal reaches the caller)."""
        return redis.Redis.from_url(self.url(), socket_timeout=2)

    def start(self) -> None:
        (self.base / "users.acl").write_text(render_users_acl())
        conf = self.base / "redis.conf"
        # DEBUG is enabled for loopback clients (the role turns it off for everyone), so that a refused
        # DEBUG here can only be the ACL's doing.
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.base}\nsave \"\"\nappendonly no\n"
            f"aclfile {self.base / 'users.acl'}\nenable-debug-command local\n")
        log = open(self.base / "redis.log", "ab")  # noqa: SIM115 - owned by the process
        self.process = subprocess.Popen([REDIS_SERVER, str(conf)], stdout=log, stderr=log, cwd=self.base)
        log.close()
        wait_for(lambda: self.admin().ping(), "redis-server")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


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
