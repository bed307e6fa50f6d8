"""The deploy health gate: N healthy answers in a row naming the new release, within a timeout."""

import json
from types import SimpleNamespace

import pytest

from roadie.core.errors import RoadieError
from roadie.deploy import stream_service


class Answers:
    """A stream host whose /healthz answers come from a list (the last one repeats)."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = 0
        self.inventory_host = SimpleNamespace(name="stream1")

    def run(self, command, **kwargs):
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        return SimpleNamespace(exited=0, stdout=json.dumps(answer) + "\n", stderr="")


def ok(release="r2"):
    return {"status": 200, "body": {"release": release, "database": "ok", "cache": "ok"}}


def test_gate_needs_consecutive_passes_on_the_new_release():
    conn = Answers([ok("r1"), ok(), ok(), {"status": 503, "body": {"release": "r2", "database": "error",
                                                                   "cache": "ok"}}, ok(), ok(), ok()])
    health = stream_service.health_gate(conn, "r2", passes=3, interval=0, timeout=5)
    assert health.ok_for("r2")
    assert conn.calls == 7  # the streak restarted after the 503


def test_gate_fails_with_the_last_answer_and_the_host():
    conn = Answers([{"status": 0, "error": "ConnectionRefusedError: [Errno 111] Connection refused"}])
    with pytest.raises(RoadieError) as err:
        stream_service.health_gate(conn, "r2", passes=2, interval=0.01, timeout=0.1)
    message = str(err.value)
    assert message.startswith("stream1: health gate failed after 0 s: ConnectionRefusedError")
    assert "want release r2" in message and "\n" not in message


def test_old_release_answering_healthy_never_passes():
    with pytest.raises(RoadieError, match="release r1, database ok, cache ok"):
        stream_service.health_gate(Answers([ok("r1")]), "r2", passes=1, interval=0.01, timeout=0.1)


@pytest.mark.parametrize("body", [{"release": "r2", "database": "ok", "cache": "error"},
                                  {"release": "r2", "database": "error", "cache": "ok"},
                                  {"release": "r2"}])
def test_unhealthy_dependencies_fail_the_gate(body):
    with pytest.raises(RoadieError):
        stream_service.health_gate(Answers([{"status": 200, "body": body}]), "r2", passes=1, interval=0.01,
                                timeout=0.05)
