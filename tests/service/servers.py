"""A real PostgreSQL 15 and a real Redis on loopback for the stream service tests (conftest.py starts them).

Both run from temporary directories on free ports of 127.0.0.1 (never 5432 / 6379), as their own
processes: no systemd unit, no default cluster. Redis loads the redis role's own users.acl template,
rendered with the role's defaults (user names and the app user's ACL rules) and the throw-away passwords
below, so the service runs under the ACL a provisioned host gives it.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import jinja2
import psycopg
import pytest
import redis
import yaml

ROOT = Path(__file__).resolve().parents[2]
APP_DIR = ROOT / "app"

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
