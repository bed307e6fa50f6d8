"""A failed-over primary that comes back: which one is stale is read from the fleet's audit log."""

from roadie.db import fencing


def _failover(old: str, new: str, result: str = "ok") -> dict:
    return {"action": "db.failover", "result": result, "old_primary": old, "new_primary": new, "ts": "t"}


def test_the_last_successful_failovers_old_primary_is_the_stale_one():
    records = [_failover("db2", "db1"), {"action": "deploy", "result": "ok"}, _failover("db1", "db2")]
    assert fencing.stale_primary(records, ["db1", "db2"])["old_primary"] == "db1"


def test_a_failed_failover_does_not_name_a_stale_primary():
    records = [_failover("db2", "db1"), _failover("db1", "db2", result="failed")]
    # The last *successful* one moved db2 -> db1: db2 is the stale one.
    assert fencing.stale_primary(records, ["db1", "db2"])["old_primary"] == "db2"


def test_nothing_is_fenced_when_the_log_does_not_match_the_two_primaries():
    assert fencing.stale_primary([], ["db1", "db2"]) is None
    assert fencing.stale_primary([_failover("db3", "db4")], ["db1", "db2"]) is None
    assert fencing.stale_primary([{"unparsed": "garbage"}], ["db1", "db2"]) is None
