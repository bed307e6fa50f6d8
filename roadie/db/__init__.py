"""PostgreSQL operations: on-demand base backups, restore checks, replication state and failover.

The hosts come from the inventory groups database_primary (one) and database_replica (topology.py).
Everything runs over the verified SSH connections (roadie/core/ssh.py) with the tools the postgresql role
installs: pg-base-backup.service, /usr/local/sbin/pg-restore-check, psql as postgres. SQL goes through
the one client (client.py): to psql on stdin, never on a command line; nothing printed here carries a
password.

One module per concern:
  wal.py            WAL positions and segment names (pure)
  topology.py       the primary and the replicas as the inventory names them
  client.py         the PostgreSQL client: SQL as postgres over the local socket, JSON answers, the role
  backups.py        base backups: list them, take one
  restore_check.py  restore a backup on another host and compare its key tables
  transfer.py       files streamed from one host to another through this controller (paramiko channels)
  replication.py    each host's role, WAL positions, lag and slots
  failover.py       the failover plan and its run
  fencing.py        fencing a primary, also one that comes back after a forced failover
  commands.py       what fab's db tasks do around all that: check input, ask, guard, audit, rows
"""
