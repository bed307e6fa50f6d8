"""roadie.db without hosts: WAL positions and segments, the lag threshold, the failover plan, the
env file rewrite, replication rows and the restore comparison."""

from __future__ import annotations

from pathlib import Path

import pytest

from roadie.core.errors import RoadieError
from roadie.core.inventory import Host, Inventory
from roadie.db import failover as db_failover
from roadie.db import fencing, wal
from roadie.db import replication as db_replication
from roadie.db import restore_check as db_restore
from roadie.db import topology as db_topology
from tests.unit.fakes import addresses_only


def _host(name: str, address: str, groups: tuple[str, ...]) -> Host:
    return Host(name, address, 22, "root", Path("/dev/null"), None, groups)


def _inventory(replicas: tuple[str, ...] = ("db2",), primaries: tuple[str, ...] = ("db1",)) -> Inventory:
    hosts = {"lb1": _host("lb1", "10.0.0.10", ("balancer",)),
             "s1": _host("s1", "10.0.0.101", ("stream",)), "s2": _host("s2", "10.0.0.102", ("stream",))}
    addresses = {"db1": "10.0.0.20", "db2": "10.0.0.21", "db3": "10.0.0.22"}
    for name in primaries:
        hosts[name] = _host(name, addresses[name], ("database_primary",))
    for name in replicas:
        hosts[name] = _host(name, addresses[name], ("database_replica",))
    groups = {"balancer": ("lb1",), "stream": ("s1", "s2"), "database_primary": primaries,
              "database_replica": replicas, "all": tuple(hosts)}
    return Inventory(Path("/x/lab"), hosts, groups, resolver=addresses_only(hosts))


def test_lsn_round_trip_and_bad_input():
    assert wal.parse_lsn("0/3000148") == 0x3000148
    assert wal.parse_lsn("1/0") == 1 << 32
    assert wal.format_lsn(wal.parse_lsn("A/FF00")) == "A/FF00"
    for bad in ("", "3000148", "0/xyz", "0/1/2"):
        with pytest.raises(RoadieError, match="not a WAL position"):
            wal.parse_lsn(bad)


def test_segment_names_match_pg_walfile_name():
    # pg_walfile_name('0/3000148') on timeline 1 = 000000010000000000000003
    assert wal.segment_name(1, wal.parse_lsn("0/3000148")) == "000000010000000000000003"
    assert wal.segment_name(2, wal.parse_lsn("1/FF000000")) == "0000000200000001000000FF"


def test_wal_needed_spans_the_backup_to_the_restore_point_and_names_a_gap():
    archived = [f"0000000100000000000000{n:02X}" for n in range(2, 8)] + ["00000002.history"]
    assert wal.wal_needed("000000010000000000000003", "0/5000100", archived) == [
        "000000010000000000000003", "000000010000000000000004", "000000010000000000000005", "00000002.history"]
    # A restore point record ending exactly at a segment boundary lives in the segment before it.
    assert wal.wal_needed("000000010000000000000003", "0/5000000", archived)[-2] == "000000010000000000000004"
    with pytest.raises(RoadieError, match="000000010000000000000006 is missing"):
        wal.wal_needed("000000010000000000000005", "0/7000010",
                       [a for a in archived if not a.endswith("06")])
    with pytest.raises(RoadieError, match="before the backup"):
        wal.wal_needed("000000010000000000000005", "0/3000010", archived)


def test_compare_tables_names_the_table_that_differs():
    ref = {"plays": {"rows": 10, "checksum": "123"}, "tracks": {"rows": 12, "checksum": "-5"}}
    assert db_restore.compare_tables(ref, {"plays": {"rows": 10, "checksum": "123"},
                                           "tracks": {"rows": 12, "checksum": "-5"}}) == []
    problems = db_restore.compare_tables(ref, {"plays": {"rows": 9, "checksum": "123"},
                                               "tracks": {"rows": 12, "checksum": "6"}})
    assert problems == ["table plays: 9 rows restored, 10 recorded at backup time",
                        "table tracks: checksum 6 restored, -5 recorded"]
    assert db_restore.compare_tables(ref, {"plays": ref["plays"]}) == [
        "table tracks: missing from the restored database"]


@pytest.mark.parametrize(("lag", "max_lag", "force", "goes_on"), [
    (0, 100, False, True), (100, 100, False, True), (101, 100, False, False), (101, 100, True, True),
    (None, 100, False, False), (None, 100, True, True),
])
def test_lag_threshold(lag, max_lag, force, goes_on):
    if goes_on:
        verdict = db_failover.lag_verdict(lag, max_lag, force)
        assert (verdict == "") == (lag is not None and lag <= max_lag)
    else:
        with pytest.raises(RoadieError, match="--force"):
            db_failover.lag_verdict(lag, max_lag, force)


@pytest.mark.parametrize("bad", ["-1", "ten", "1.5", ""])
def test_bad_max_lag_is_refused_before_any_host(bad):
    with pytest.raises(RoadieError, match="--max-lag"):
        db_failover.plan_failover(_inventory(), bad)


def test_failover_plan_promotes_the_first_replica_or_the_named_one():
    plan = db_failover.plan_failover(_inventory(("db2", "db3")), 1024)
    assert (plan.old_primary, plan.new_primary, plan.new_primary_address) == ("db1", "db2", "10.0.0.21")
    assert plan.stream_hosts == ["s1", "s2"] and plan.max_lag == 1024
    assert db_failover.plan_failover(_inventory(("db2", "db3")), to="db3").new_primary == "db3"
    assert any("fence db1" in line for line in plan.describe())
    with pytest.raises(RoadieError, match="--to 'db1' is not in database_replica"):
        db_failover.plan_failover(_inventory(), to="db1")
    with pytest.raises(RoadieError, match="no replica to promote"):
        db_failover.plan_failover(_inventory(()))
    with pytest.raises(RoadieError, match="exactly one host in database_primary"):
        db_failover.plan_failover(_inventory(("db3",), ("db1", "db2")))


def test_inventory_change_names_both_hosts():
    text = "\n".join(db_failover.inventory_change(db_failover.plan_failover(_inventory()), "lab"))
    assert "move db2 to database_primary and db1 to database_replica" in text
    assert "systemctl unmask postgresql@15-main.service" in text and fencing.FENCE_FILE in text


# The env-file rewrite a failover does on stream hosts is tested in tests/unit/test_stream_env.py.


def test_replication_rows_from_what_each_host_answered():
    inv = _inventory()
    topo = db_topology.topology(inv)
    primary = {"in_recovery": False, "current_lsn": "0/5000000", "replay_lsn": None, "replay_age_s": None,
               "senders": [{"name": "db2", "addr": "10.0.0.21", "state": "streaming", "sent_lsn": "0/5000000",
                            "replay_lsn": "0/4FFFF00", "lag_bytes": 256, "replay_lag_s": 0.002}],
               "slots": [{"slot": "db2", "active": True, "restart_lsn": "0/4000000", "retained_bytes": 16777216,
                          "wal_status": "reserved"}]}
    replica = {"in_recovery": True, "current_lsn": "0/5000000", "replay_lsn": "0/4FFFF00", "replay_age_s": 3.0,
               "senders": [], "slots": []}
    rows = db_replication.build_states(topo, {"db1": (primary, ""), "db2": (replica, "")})
    assert [(r.host, r.role) for r in rows] == [("db1", "primary"), ("db2", "replica")]
    assert rows[1].lag_bytes == 256 and rows[1].lag_s == 0.002 and rows[1].state == "streaming"
    assert rows[0].slots[0]["active"] is True
    down = db_replication.build_states(topo, {"db1": (None, "db1 (10.0.0.20:22): unreachable"), "db2": (replica, "")})
    assert down[0].role == "down" and not down[0].reachable and down[1].lag_bytes is None
