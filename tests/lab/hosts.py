"""Looking at lab hosts over the tests' own connections (root through the `conns` fixture, unless a test
passes another): commands that must succeed, SQL as postgres, Redis as its admin user, secrets on stdin."""

from __future__ import annotations

import io
import shlex


def run_with_secret(conn, command: str, env_name: str, secret: str):
    """Run `command` with a secret in an environment variable read from stdin: never on a command line."""
    script = f'IFS= read -r {env_name}; export {env_name}; {command}'
    return conn.run(f"sh -c {shlex.quote(script)}", in_stream=io.StringIO(secret + "\n"), hide=True, warn=True)


def checked(conn, command: str) -> str:
    """The stdout of a command that has to succeed on the host."""
    result = conn.run(command, hide=True, warn=True, in_stream=False)
    assert result.exited == 0, f"{command}: {result.stderr}"
    return result.stdout


def psql_postgres(conn, sql: str, db: str = "stream") -> str:
    """One SQL statement as postgres over the host's local socket; its unaligned, tuples-only output."""
    result = conn.run(f"runuser -u postgres -- psql -X -At -d {db} -c \"{sql}\"", hide=True, warn=True,
                      in_stream=False)
    assert result.exited == 0, result.stderr
    return result.stdout.strip()


def redis_admin(conn, password: str, *argv: str) -> str:
    """One redis-cli command as Redis' admin user, run on the cache host itself; the reply as redis-cli
    prints it without a terminal (`DBSIZE` -> "12", `--scan` -> one key a line)."""
    result = run_with_secret(conn, f"redis-cli --no-auth-warning --user admin -h 127.0.0.1 {shlex.join(argv)}",
                             "REDISCLI_AUTH", password)
    assert result.exited == 0, result.stderr
    return result.stdout.strip()
