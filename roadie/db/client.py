"""The one PostgreSQL client: SQL run as postgres over the local socket on a database host.

SQL goes to psql on stdin, never on a command line (but for `serving`'s one fixed query, sent with -c as
the restart health check always has); answers come back as psql's unaligned, tuples-only text, or as one
JSON value. Database work runs as postgres (the deploy user's sudo allows that account on database hosts,
never root); the few root actions are the exact `systemctl` lines of the common role's sudo list. `run`
is the one way the db modules run a command on a database host and fail in one line.
"""

from __future__ import annotations

import io
import json
import shlex
from typing import TYPE_CHECKING

from roadie.core.errors import RoadieError
from roadie.deploy import stream_host

if TYPE_CHECKING:
    from roadie.core.inventory import Inventory
    from roadie.core.ssh import HostConnection

AS_POSTGRES = "sudo -n -u postgres "
# The server's role as the restart health check reads it: a primary, or a replica that streams.
SERVING_SQL = ("SELECT CASE WHEN NOT pg_is_in_recovery() THEN 'primary' "
               "WHEN EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming') THEN 'replica streaming' "
               "ELSE 'replica not streaming' END")


def host_name(conn: HostConnection) -> str:
    """The inventory name of the host behind `conn`."""
    return stream_host.host_name(conn)


def run(conn: HostConnection, command: str, *, what: str, timeout: int | None = 600, stdin: str | None = None):
    """Run `command` on the host; a non-zero exit is one RoadieError line naming the host and `what`."""
    result = conn.run(command, hide=True, warn=True, timeout=timeout,
                      in_stream=io.StringIO(stdin) if stdin is not None else False)
    if result.exited != 0:
        lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise RoadieError(f"{host_name(conn)}: {what} failed: {lines[-1] if lines else f'exit {result.exited}'}")
    return result


def psql(conn: HostConnection, sql: str, database: str = "postgres", *, what: str = "query") -> str:
    """Run SQL (on stdin) as postgres over the local socket; the unaligned, tuples-only output."""
    cmd = f"cd / && {AS_POSTGRES}psql -X -A -t -q -v ON_ERROR_STOP=1 -d {shlex.quote(database)}"
    return run(conn, cmd, what=what, stdin=sql, timeout=120).stdout.strip()


def ask_json(conn: HostConnection, sql: str, what: str) -> dict:
    """The JSON value SQL answers with (its last line of output)."""
    out = psql(conn, sql, what=what)
    try:
        return json.loads(out.splitlines()[-1])
    except (ValueError, IndexError):
        raise RoadieError(f"{host_name(conn)}: {what}: unexpected answer {out[-200:]!r}") from None


def is_in_recovery(conn: HostConnection) -> bool:
    """The server's role: True on a replica (in recovery), False on a primary."""
    return psql(conn, "SELECT pg_is_in_recovery()", what="reading the server role") == "t"


def serving(conn: HostConnection, inv: Inventory) -> tuple[bool, str]:
    """Whether the server is healthy after a restart (a primary, or a replica that streams), and what it said.

    Never raises: a failure is (False, psql's last words). The restart health check polls this.
    """
    result = conn.run(f"cd / && {AS_POSTGRES}psql -XAtq -d postgres -c {shlex.quote(SERVING_SQL)}", hide=True,
                      warn=True, in_stream=False, timeout=30)
    answer = result.stdout.strip()
    return result.exited == 0 and answer in ("primary", "replica streaming"), answer or result.stderr.strip()[-160:]
