"""`fab status` against the real lab: a stream host out of rotation behind Roadie's back needs attention
(exit 1, the host named); one drained on purpose with `fab drain --message` does not, and shows who and why.

The commands run as an operator runs them (`fab ...` in a subprocess); HAProxy's state is read and set as
root through the runtime API, and the on-purpose record is read as root on the lock host.
"""

import json

from roadie.change.lock import STATE_DIR
from roadie.deploy.balancer import Balancer
from roadie.remote.rotation_state import FILE as DRAINED_FILE
from tests.lab.fabrun import fab, ok

HOST = "stream3"
LOCK_HOST = "lb1"
OPERATOR = "oncall-lab"


def _status() -> tuple[int, dict]:
    result = fab("status", "--json")
    return result.returncode, json.loads(result.stdout)


def _unhealthy(data: dict) -> list[dict]:
    """The rows that make `fab status` exit non-zero without a problem line (a service not active, a probe
    error), for the failure message."""
    return [row for row in data["hosts"] if not row["healthy"]]


def _recorded(conns) -> dict:
    """drained.json on the lock host, read as root ({} when there is none)."""
    out = conns(LOCK_HOST).run(f"cat {STATE_DIR}/{DRAINED_FILE} 2>/dev/null || echo '{{}}'", hide=True,
                               warn=True, in_stream=False).stdout
    return json.loads(out)


def _back_in_rotation(lb: Balancer) -> None:
    lb.enable(HOST)
    lb.wait_up(HOST, timeout=60)


def test_a_host_drained_behind_roadies_back_makes_status_fail_naming_it(stack, conns):
    code, before = _status()
    assert code == 0 and before["problems"] == [], (before["problems"], _unhealthy(before))
    lb = Balancer(conns(LOCK_HOST))
    lb.drain(HOST)                                   # root on the runtime API: no lease, no record
    try:
        assert lb.server(HOST).status == "DRAIN"
        result = fab("status")
        assert result.returncode == 1, result.stdout + result.stderr
        lines = result.stdout.splitlines()
        assert any(ln.startswith(f"attention: {HOST} is out of rotation (HAProxy DRAIN)") for ln in lines), lines
        assert "problem" in result.stderr.strip().splitlines()[-1]
        code, data = _status()
        assert code == 1
        assert [p["host"] for p in data["problems"]] == [HOST] and data["problems"][0]["severity"] == "warning"
    finally:
        _back_in_rotation(lb)
    code, after = _status()
    assert code == 0 and after["problems"] == [], after["problems"]


def test_a_host_drained_on_purpose_keeps_status_at_zero_until_undrained(stack, conns):
    lb = Balancer(conns(LOCK_HOST))
    out = ok(fab("drain", HOST, "--message", "x", operator=OPERATOR))
    try:
        assert "drained: no sessions left" in out and lb.server(HOST).status == "DRAIN"
        record = _recorded(conns)[HOST]
        assert record["by"].startswith(f"{OPERATOR}@") and record["why"] == "x"
        code, data = _status()
        assert code == 0 and data["problems"] == [], (data["problems"], _unhealthy(data))
        row = {r["host"]: r for r in data["hosts"]}[HOST]
        assert row["haproxy"] == "DRAIN" and row["drained_on_purpose"] == f"drained by {record['by']}: x"
        table = ok(fab("status"))
        assert any(ln.startswith(HOST + " ") and ln.rstrip().endswith(f"drained by {record['by']}: x")
                   for ln in table.splitlines()), table
    finally:
        ok(fab("undrain", HOST))
    assert lb.server(HOST).in_rotation
    assert HOST not in _recorded(conns)
    code, data = _status()
    assert code == 0 and data["problems"] == [], (data["problems"], _unhealthy(data))
    assert {r["host"]: r for r in data["hosts"]}[HOST]["drained_on_purpose"] is None
