"""Parsing HAProxy's runtime API answers, and the audit log's append path (run locally)."""


import pytest

from roadie import balancer
from roadie.errors import RoadieError

HEADER = ("# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,"
          "status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,"
          "rate,rate_lim,rate_max,check_status,check_code,check_duration")
STAT = HEADER + """
http,FRONTEND,,,3,10,2000,50,0,0,0,0,0,,,,,OPEN,,,,,,,,,1,2,0,,,,0,1,0,3,,,
stream,stream1,0,0,2,5,,20,0,0,,0,,0,0,0,0,UP,1,1,0,0,0,100,0,,1,3,1,,20,,2,0,,3,L7OK,200,1
stream,stream2,0,0,1,5,,20,0,0,,0,,0,0,0,0,DRAIN,0,1,0,0,0,100,0,,1,3,2,,20,,2,0,,3,L7OK,200,1
stream,stream3,0,0,0,5,,20,0,0,,0,,0,0,0,0,DOWN,1,1,0,3,1,5,5,,1,3,3,,20,,2,0,,3,L7STS,503,1
stream,BACKEND,0,0,3,10,200,60,0,0,0,0,,0,0,0,0,UP,2,2,0,,0,100,0,,1,3,0,,60,,1,0,,6,,,
"""


def test_parse_stat_keeps_servers_only():
    servers = balancer.parse_stat(STAT)
    assert [(s.backend, s.server, s.status, s.sessions) for s in servers] == [
        ("stream", "stream1", "UP", 2), ("stream", "stream2", "DRAIN", 1), ("stream", "stream3", "DOWN", 0)]
    assert [s.in_rotation for s in servers] == [True, False, False]
    assert servers[2].check_status == "L7STS"


def test_unexpected_answer_is_refused():
    with pytest.raises(RoadieError, match="unexpected answer"):
        balancer.parse_stat("Unknown command. Please enter one of the following commands only")


class Canned:
    """Answers runtime API commands from a table (the wire format is tested against real HAProxy in the lab)."""

    def __init__(self, answers):
        self.answers = answers
        self.sent = []

    def run(self, command, **kwargs):
        line = command.rsplit(" ", 1)[-1].strip("'")
        self.sent.append(command)
        from types import SimpleNamespace
        text = self.answers.get(line, self.answers.get("*", ""))
        return SimpleNamespace(exited=0, stdout=text, stderr="")


def test_unknown_server_is_one_clear_line():
    # HAProxy's own answer to `set server stream/stream9 state drain`; the servers are listed only then.
    lb = balancer.Balancer(Canned({"stat": STAT, "drain": "No such server.\n"}), "stream")
    with pytest.raises(RoadieError, match=r"has no server 'stream9' \(has: stream1, stream2, stream3\)"):
        lb.drain("stream9")


def test_a_state_change_is_one_request():
    conn = Canned({"stat": STAT, "*": ""})
    balancer.Balancer(conn, "stream").drain("stream1")
    assert len(conn.sent) == 1 and conn.sent[0].endswith("state stream stream1 drain")


@pytest.mark.parametrize("name", ["a b", "x;reboot", "", "../s"])
def test_bad_names_never_reach_the_socket(name):
    with pytest.raises(RoadieError, match="bad"):
        balancer.Balancer(Canned({}), name)
