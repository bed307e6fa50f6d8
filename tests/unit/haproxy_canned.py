"""HAProxy's runtime API as the unit tests see it: a `show stat` answer for three stream servers (UP, DRAIN,
DOWN) and a connection that answers commands from a table."""

from types import SimpleNamespace

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


class Canned:
    """Answers runtime API commands from a table (the wire format is tested against real HAProxy in the lab)."""

    def __init__(self, answers):
        self.answers = answers
        self.sent = []

    def run(self, command, **kwargs):
        line = command.rsplit(" ", 1)[-1].strip("'")
        self.sent.append(command)
        text = self.answers.get(line, self.answers.get("*", ""))
        return SimpleNamespace(exited=0, stdout=text, stderr="")
