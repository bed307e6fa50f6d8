"""Parsing HAProxy's runtime API answers, and the audit log's append path (run locally)."""


import pytest

from roadie.core.errors import RoadieError
from roadie.deploy import balancer
from tests.unit.haproxy_canned import STAT, Canned


def test_parse_stat_keeps_servers_only():
    servers = balancer.parse_stat(STAT)
    assert [(s.backend, s.server, s.status, s.sessions) for s in servers] == [
        ("stream", "stream1", "UP", 2), ("stream", "stream2", "DRAIN", 1), ("stream", "stream3", "DOWN", 0)]
    assert [s.in_rotation for s in servers] == [True, False, False]
    assert servers[2].check_status == "L7STS"


def test_unexpected_answer_is_refused():
    with pytest.raises(RoadieError, match="unexpected answer"):
        balancer.parse_stat("Unknown command. Please enter one of the following commands only")


def test_unknown_server_is_one_clear_line():
    # HAProxy's own answer to `set server stream/stream9 state drain`; the servers are listed only then.
    lb = balancer.Balancer(Canned({"stat": STAT, "drain": "No such server.\n"}), "stream")
    with pytest.raises(RoadieError, match=r"has no server 'stream9' \(has: stream1, stream2, stream3\)"):
        lb.drain("stream9")


def test_a_state_change_is_one_request():
    conn = Canned({"stat": STAT, "*": ""})
    balancer.Balancer(conn, "stream").drain("stream1")
    assert len(conn.sent) == 1 and conn.sent[0].endswith("state stream stream1 drain")


def test_a_drain_then_its_wait_reads_the_servers_from_the_drain_answer():
    # The helper answers a state change with `show stat` just after it: the first look costs no request.
    conn = Canned({"drain": STAT, "ready": STAT, "stat": STAT})
    lb = balancer.Balancer(conn, "stream")
    drained, state = lb.wait_drained("stream3", timeout=5, seen=lb.drain("stream3"))
    assert drained and state.status == "DOWN"
    assert lb.wait_up("stream1", timeout=5, seen=lb.enable("stream1")).status == "UP"
    assert [c.rsplit(" ", 1)[-1] for c in conn.sent] == ["drain", "ready"]


def test_a_helper_that_answers_nothing_is_read_after_the_change():
    conn = Canned({"stat": STAT, "*": ""})
    lb = balancer.Balancer(conn, "stream")
    seen = lb.enable("stream1")
    assert seen is None and lb.wait_up("stream1", timeout=5, seen=seen).status == "UP"
    assert [c.rsplit(" ", 1)[-1] for c in conn.sent] == ["ready", "stat"]


@pytest.mark.parametrize("name", ["a b", "x;reboot", "", "../s"])
def test_bad_names_never_reach_the_socket(name):
    with pytest.raises(RoadieError, match="bad"):
        balancer.Balancer(Canned({}), name)
