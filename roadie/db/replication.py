"""Replication state: each database host's role, WAL positions, lag and replication slots."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from roadie.core import ssh
from roadie.core.errors import RoadieError
from roadie.core.inventory import Host, Inventory
from roadie.db import client
from roadie.db.topology import Topology, topology
from roadie.db.wal import parse_lsn


@dataclass
class NodeState:
    """One database host's replication state."""

    host: str
    reachable: bool
    role: str = "unknown"                  # primary, replica, down, unknown
    current_lsn: str | None = None         # primary: pg_current_wal_lsn; replica: last received
    replay_lsn: str | None = None          # replica: last replayed
    sent_lsn: str | None = None            # replica: what the primary's walsender sent it
    lag_bytes: int | None = None           # replica: primary's current position - this replay position
    lag_s: float | None = None
    state: str = ""                        # walsender state seen from the primary (streaming, catchup...)
    slots: list[dict] = field(default_factory=list)
    error: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


_STATE_SQL = """
SELECT json_build_object(
  'in_recovery', pg_is_in_recovery(),
  'current_lsn', CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn()::text
                      ELSE pg_current_wal_lsn()::text END,
  'replay_lsn', pg_last_wal_replay_lsn()::text,
  'replay_age_s', extract(epoch FROM now() - pg_last_xact_replay_timestamp()),
  'senders', (SELECT coalesce(json_agg(json_build_object(
                 'name', application_name, 'addr', client_addr::text, 'state', state,
                 'sent_lsn', sent_lsn::text, 'replay_lsn', replay_lsn::text,
                 'lag_bytes', CASE WHEN pg_is_in_recovery() THEN NULL
                                   ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint END,
                 'replay_lag_s', extract(epoch FROM replay_lag))), '[]') FROM pg_stat_replication),
  'slots', (SELECT coalesce(json_agg(json_build_object(
                 'slot', slot_name, 'active', active, 'restart_lsn', restart_lsn::text,
                 'retained_bytes', CASE WHEN pg_is_in_recovery() OR restart_lsn IS NULL THEN NULL
                                        ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint END,
                 'wal_status', wal_status)), '[]') FROM pg_replication_slots))
"""


def _probe(host: Host) -> tuple[Host, dict | None, str]:
    try:
        conn = ssh.connect(host)
    except RoadieError as exc:
        return host, None, str(exc)
    try:
        return host, client.ask_json(conn, _STATE_SQL, "reading replication state"), ""
    except Exception as exc:  # a host that drops the session mid-read is a row, not a traceback
        return host, None, ssh.describe_failure(host, exc)
    finally:
        conn.close()


def build_states(topo: Topology, raw: dict[str, tuple[dict | None, str]]) -> list[NodeState]:
    """Rows for each database host from what each answered (pure: unit-tested)."""
    states: list[NodeState] = []
    primary_data = next((d for d, _ in raw.values() if d and not d["in_recovery"]), None)
    senders = {s["addr"]: s for s in (primary_data or {}).get("senders", [])}
    senders_by_name = {s["name"]: s for s in (primary_data or {}).get("senders", [])}
    for host in topo.hosts:
        data, error = raw.get(host.name, (None, "not probed"))
        if data is None:
            states.append(NodeState(host.name, False, "down", error=error))
            continue
        node = NodeState(host.name, True, "replica" if data["in_recovery"] else "primary",
                         current_lsn=data["current_lsn"], slots=data["slots"] or [])
        if data["in_recovery"]:
            node.replay_lsn = data["replay_lsn"]
            sender = senders.get(host.address) or senders_by_name.get(_slot_name(host.name))
            if sender is not None:
                node.sent_lsn, node.state = sender["sent_lsn"], sender["state"]
                node.lag_bytes = sender["lag_bytes"]
                if node.lag_bytes == 0:
                    node.lag_s = 0.0
                elif sender["replay_lag_s"] is not None:
                    node.lag_s = round(float(sender["replay_lag_s"]), 3)
            elif primary_data is not None and data["replay_lsn"]:
                node.lag_bytes = max(0, parse_lsn(primary_data["current_lsn"]) - parse_lsn(data["replay_lsn"]))
                node.state = "not streaming"
            if node.lag_s is None and node.lag_bytes and data["replay_age_s"] is not None:
                node.lag_s = round(float(data["replay_age_s"]), 3)
        states.append(node)
    return states


def _slot_name(host: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", host.split(".")[0].lower())


def replication(inv: Inventory) -> list[NodeState]:
    """Each database host's role, WAL positions, lag and slots, read in parallel."""
    topo = topology(inv)
    raw = {h.name: (d, e) for h, d, e in ssh.parallel(_probe, topo.hosts)}
    return build_states(topo, raw)
