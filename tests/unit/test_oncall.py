"""On-call commands: input checks, plans and rendering that run before any host is touched."""

import pytest

from roadie.cache import commands as cache_commands
from roadie.core import inventory
from roadie.core.errors import RoadieError
from roadie.deploy import maintenance
from roadie.deploy.balancer import Balancer
from roadie.deploy.types import Reporter
from roadie.status import ops, probe, report
from tests.unit.cli_run import assert_one_line_error, run_cli
from tests.unit.haproxy_canned import STAT, Canned


def test_drain_refuses_to_go_below_min_serving():
    # stream1 UP, stream2 DRAIN, stream3 DOWN: stream1 is the only host serving.
    lb = Balancer(Canned({"stat": STAT}), "stream")
    with pytest.raises(RoadieError, match=r"would leave 0 stream hosts in rotation, below --min-serving 1"):
        maintenance.drain(lb, "stream1", min_serving=1, force=False, timeout=1, report=Reporter())
    assert not any("set server" in c for c in lb.conn.sent)


def test_serving_without_counts_only_hosts_in_rotation():
    lb = Balancer(Canned({"stat": STAT}), "stream")
    assert maintenance.serving_without(lb, []) == 1
    assert maintenance.serving_without(lb, ["stream2"]) == 1
    assert maintenance.serving_without(lb, ["stream1"]) == 0


def test_restart_order_puts_the_primary_last():
    inv = inventory.load("lab")
    order = maintenance.restart_order(inv, [inv.hosts["db1"], inv.hosts["cache1"], inv.hosts["db2"]])
    assert [h.name for h in order][-1] == "db1"


def test_every_non_stream_group_has_a_service():
    inv = inventory.load("lab")
    assert {maintenance.service_for(inv.hosts[n]).unit for n in ("lb1", "db1", "db2", "cache1")} == {
        "haproxy.service", "postgresql@15-main.service", "redis-server.service"}
    with pytest.raises(RoadieError, match="no group with a known service"):
        maintenance.service_for(inventory.Host("x", "10.0.0.1", 22, "root", inv.hosts["lb1"].known_hosts))


def test_maintenance_page_escapes_the_operators_message():
    page = maintenance.render_page("<script>alert(1)</script> & more", 90)
    assert "&lt;script&gt;" in page and "<script>" not in page
    assert "about 2 minutes" in page


@pytest.mark.parametrize("kwargs, expected", [
    ({"unit": "stream.service; reboot"}, "bad unit name"),
    ({"unit": "stream.service", "lines": 0}, "--lines must be 1..100000"),
    ({"unit": "stream.service", "since": "$(reboot)"}, "bad --since"),
    ({"unit": "stream.service", "grep": "(unclosed"}, "bad --grep regular expression"),
])
def test_journal_command_refuses_bad_values(kwargs, expected):
    args = {"lines": 100, "since": None, "grep": None, "follow": False, **kwargs}
    unit = args.pop("unit")
    with pytest.raises(RoadieError, match=expected):
        ops.journal_command(unit, **args)


def test_journal_command_quotes_everything():
    command = ops.journal_command("stream.service", lines=5, since="1 hour ago", grep="GET /tracks|error",
                                  follow=True)
    assert command == ("journalctl --no-pager --output=short-iso -u stream.service -n 5 --since '1 hour ago' "
                       "--grep 'GET /tracks|error' --follow")


@pytest.mark.parametrize("pattern", ["", "a b", "x" * 201])
def test_cache_pattern_checked(pattern):
    with pytest.raises(RoadieError, match="bad --pattern"):
        cache_commands.check_pattern(pattern)


def test_status_table_marks_unreachable_and_inactive_hosts():
    rows = [
        probe.HostStatus("stream1", ["stream"], True, release="r1", services={"stream.service": "active"},
                          haproxy="UP", sessions=0, load1=0.1, mem_used_pct=10.0, disk_used_pct=20.0),
        probe.HostStatus("stream2", ["stream"], False, error="stream2 (10.0.0.2:22): unreachable (timed out)"),
        probe.HostStatus("db1", ["database", "database_primary"], True, services={"postgresql@15-main.service":
                          "failed"}, pg_role="primary", pg_lag_bytes=0),
    ]
    out = report.table_rows(rows)
    assert out[0][2:6] == ["yes", "r1", "all active", "UP"] and out[0][-1] == ""
    assert out[1][2] == "NO" and "unreachable" in out[1][-1]
    assert out[2][1] == "database" and out[2][4] == "postgresql@15-main=failed" and out[2][-1] == "service not active"
    assert [r.healthy for r in rows] == [True, False, False]


@pytest.mark.parametrize("args, expected", [
    (("fab", "drain", "db1"), "db1 is not a stream host"),
    (("fab", "drain", "nosuch"), "unknown host 'nosuch'"),
    (("fab", "restart"), "name the hosts to restart with --group"),
    (("fab", "restart", "--group", "stream", "--no-rolling"), "restarts are always rolling"),
    (("fab", "restart", "--group", "stream", "--min-serving", "3"), "--min-serving 3 is impossible with 3 hosts"),
    (("fab", "restart", "--group", "stream", "--batch", "0"), "--batch must be at least 1"),
    (("fab", "maintenance.on", "--retry-after", "soon"), "--retry-after must be a whole number"),
    (("fab", "maintenance.on", "--retry-after", "0"), "--retry-after must be 1..86400"),
    (("fab", "cache.flush", "--pattern", "a b"), "bad --pattern"),
    (("fab", "logs", "stream1", "--unit", "bad;unit"), "bad unit name"),
    (("fab", "logs", "nosuch"), "unknown host 'nosuch'"),
    (("fab", "logs", "stream1", "--grep", "(x"), "bad --grep regular expression"),
    (("fab", "disk", "--threshold", "120"), "--threshold must be 0.01..100"),
    (("fab", "run", "uptime", "--group", "all", "--timeout", "soon"), "--timeout must be a whole number"),
    (("fab", "logs", "stream1", "--lines", "many"), "--lines must be a whole number"),
    (("fab", "run", "uptime"), "name the hosts with --group"),
    (("fab", "run", " ", "--group", "stream"), "the command is empty"),
    (("fab", "run", "uptime", "--group", "nosuch"), "unknown host or group 'nosuch'"),
    (("fab", "status", "--group", "nosuch"), "unknown host or group 'nosuch'"),
])
def test_bad_oncall_arguments_touch_no_host(args, expected):
    assert_one_line_error(run_cli(*args), expected)


@pytest.mark.parametrize("args, expected", [
    (("fab", "audit", "--last", "x"), "--last must be a whole number"),
    (("fab", "audit", "--last", "0"), "--last must be 1..100000"),
    (("fab", "deploy", "--min-serving", "x", "--dry-run"), "bad number"),
    (("fab", "drain", "stream1", "--drain-timeout", "soon"), "bad number"),
])
def test_numbers_are_checked_before_any_host(args, expected):
    assert_one_line_error(run_cli(*args), expected)
