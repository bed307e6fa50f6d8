"""roadie.deploy.restarts: `fab restart` plans from the inventory, shows the plan and asks before any restart."""

import pytest

from roadie.core import inventory
from roadie.core.errors import RoadieError
from roadie.deploy import maintenance, restarts
from tests.unit.fakes import RecordedChange, ScriptedTerminal


@pytest.fixture(scope="module")
def lab():
    return inventory.load("lab")


@pytest.fixture
def guarded(monkeypatch):
    RecordedChange.entered = []
    monkeypatch.setattr(maintenance, "Guarded", RecordedChange)
    return RecordedChange.entered


def _plan(inv, group, **kwargs):
    return restarts.plan(inv, group, **{"batch": "1", "min_serving": "1", "include_primary": False,
                                        "message": None, **kwargs})


def test_stream_hosts_restart_in_batches_and_the_others_one_at_a_time_primary_last(lab):
    plan = _plan(lab, "all", include_primary=True, batch="2")
    assert [h.name for h in plan.stream] == ["stream1", "stream2", "stream3"]
    assert plan.order == ["lb1", "cache1", "db2", "db1"] and plan.primaries == ["db1"]
    assert plan.fleet is not None and plan.fleet.balancer.name == "lb1"
    assert plan.describe() == [
        "stream hosts, drain-aware, 2 at a time: stream1, stream2, stream3",
        "one at a time, replicas first, health-checked: lb1, cache1, db2, db1 (PRIMARY: writes pause while it "
        "restarts)"]


def test_a_plan_without_stream_hosts_needs_no_balancer_plan(lab):
    plan = _plan(lab, "cache1")
    assert plan.stream == [] and plan.fleet is None
    assert plan.describe() == ["one at a time, replicas first, health-checked: cache1"]


@pytest.mark.parametrize("group", ["db1", "database", "all"])
def test_the_primary_needs_its_own_flag(lab, group):
    with pytest.raises(RoadieError, match="includes the PostgreSQL primary db1, whose restart pauses every write"):
        _plan(lab, group)


@pytest.mark.parametrize("kwargs, expected", [
    ({"batch": "0"}, "--batch must be at least 1"),
    ({"min_serving": "3"}, "--min-serving 3 is impossible with 3 hosts"),
    ({"min_serving": "x"}, "bad number"),
])
def test_a_stream_plan_that_would_drop_traffic_is_refused(lab, kwargs, expected):
    with pytest.raises(RoadieError, match=expected):
        _plan(lab, "stream", **kwargs)


@pytest.mark.parametrize("group, rolling, expected", [
    (None, True, "name the hosts to restart with --group"),
    ("stream", False, "restarts are always rolling"),
])
def test_flags_are_refused_before_the_inventory_is_read(group, rolling, expected):
    with pytest.raises(RoadieError, match=expected):
        restarts.restart("/nonexistent/inventory", group, rolling=rolling, batch="1", min_serving="1",
                         include_primary=False, message=None, terminal=ScriptedTerminal())


def test_nothing_restarts_unless_the_operator_says_yes(guarded, monkeypatch):
    monkeypatch.setattr(maintenance, "rolling_restart", lambda *a, **k: pytest.fail("restarted"))
    terminal = ScriptedTerminal(answer=False)
    with pytest.raises(RoadieError, match="not confirmed"):
        restarts.restart("lab", "stream,cache1", rolling=True, batch="1", min_serving="1", include_primary=False,
                         message=None, terminal=terminal)
    assert terminal.events == ["restart: stream hosts, drain-aware, 1 at a time: stream1, stream2, stream3",
                               "restart: one at a time, replicas first, health-checked: cache1",
                               "? restart 4 hosts"]
    assert guarded == []


def test_a_confirmed_restart_runs_each_kind_inside_one_change(guarded, monkeypatch):
    done = []
    monkeypatch.setattr(maintenance, "rolling_restart",
                        lambda fleet, options, report, hosts, change: done.append(("rolling", hosts, change)))
    monkeypatch.setattr(maintenance, "restart_one_by_one",
                        lambda inv, hosts, report: done.append(("one by one", [h.name for h in hosts], None)))
    plan = restarts.restart("lab", "database,stream", rolling=True, batch="1", min_serving="1", include_primary=True,
                            message="kernel", terminal=ScriptedTerminal())
    [change] = guarded
    assert (change.action, change.message) == ("restart", "kernel")
    assert change.hosts == ["db1", "db2", "stream1", "stream2", "stream3"] == [h.name for h in plan.hosts]
    assert done == [("rolling", ["stream1", "stream2", "stream3"], change), ("one by one", ["db1", "db2"], None)]
