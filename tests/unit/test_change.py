"""The change pipeline (roadie/change/pipeline.py): lease and heartbeat, a lost lease, a lapsed lease taken over,
interrupts and the audit record. The lock's own program runs for real, here, on a local state directory
(the lab runs it on the lock host: tests/lab/test_change_paths.py)."""

from __future__ import annotations

import json
import signal
import time

import pytest
from invoke import Context

from roadie.change import lock
from roadie.change import pipeline as change_mod
from roadie.core.errors import Interrupted, RoadieError
from roadie.core.inventory import Host


class LocalConn:
    """The lock host, played by this machine: the lock's program runs here through a local shell."""

    def __init__(self) -> None:
        self.context = Context()

    def run(self, command: str, **kwargs):
        return self.context.run(command, **kwargs)

    def close(self) -> None:
        pass


@pytest.fixture
def pipeline(tmp_path, monkeypatch):
    records: list[dict] = []
    monkeypatch.setattr(change_mod.ssh, "connect", lambda host: LocalConn())
    monkeypatch.setattr(change_mod.audit, "record", lambda conn, entry: records.append(entry))
    state = str(tmp_path / "state")
    host = Host(name="lb1", address="127.0.0.1", user="deploy", port=22, known_hosts="/dev/null", groups=("balancer",))

    def make(action: str = "deploy", **kwargs) -> change_mod.Change:
        kwargs.setdefault("report", lambda *a, **k: None)
        return change_mod.Change(host, action, hosts=["stream1"], state_dir=state, **kwargs)

    return make, records, state


def _held(state: str) -> dict | None:
    holder, _ = lock.status(LocalConn(), state)
    return holder


def test_the_heartbeat_keeps_the_lease_past_its_ttl_and_a_second_change_is_refused(pipeline):
    make, records, state = pipeline
    with make(ttl=2, heartbeat=0.3) as first:
        time.sleep(3.5)                                     # well past the 2 s TTL
        held = _held(state)
        assert held is not None and held.expires_at > time.time()
        with pytest.raises(RoadieError, match="deploy lock on .* is held by"), make("rollback"):
            pass
        first.check()                                       # still ours
        assert first.renewals >= 2                          # held past the TTL only by renewing it
    assert _held(state) is None                             # released at the end
    assert [r["result"] for r in records] == ["ok"]


def test_a_lease_that_cannot_be_renewed_stops_the_change_before_its_next_step(pipeline):
    make, records, state = pipeline
    with pytest.raises(change_mod.LeaseLost, match="could not be renewed"), make(ttl=5, heartbeat=0.2) as ch:
        lock.force_release(LocalConn(), state)              # someone broke the lock
        deadline = time.monotonic() + 5
        while not ch.lost and time.monotonic() < deadline:
            time.sleep(0.05)
        ch.check()
    assert records[-1]["result"] == "failed" and "could not be renewed" in records[-1]["error"]


def test_a_killed_holders_lease_lapses_and_the_next_change_takes_it_over(pipeline):
    make, records, state = pipeline
    killed = make(ttl=3, heartbeat=60)
    killed.__enter__()                                      # then "SIGKILL": no heartbeat, no release
    killed._stop.set()
    killed._old_handler and signal.signal(signal.SIGINT, killed._old_handler)
    with pytest.raises(RoadieError, match="is held by"), make("rollback", ttl=3):
        pass
    held = _held(state)
    assert held is not None
    while time.time() <= held.expires_at:                   # until the lease has lapsed, no longer
        time.sleep(0.1)
    with make("deploy") as next_one:
        assert next_one.took_over is not None and next_one.took_over.operation == "deploy"
    assert "took_over" in records[-1]


def test_the_first_ctrl_c_only_asks_to_stop_and_the_second_prints_the_state_and_exits_130(pipeline, monkeypatch,
                                                                                             capsys):
    make, records, _ = pipeline
    exits = []
    monkeypatch.setattr(change_mod.os, "_exit", lambda code: exits.append(code))
    with pytest.raises(Interrupted), make(heartbeat=60) as ch:
        ch.state = lambda: ["stream2: OUT OF ROTATION (drained by this command)", "release r2: stream1"]
        signal.raise_signal(signal.SIGINT)
        assert ch.interrupted and exits == []               # the step in hand goes on
        change_mod.stop_if_interrupted(ch, "after batch 1/3; resume with the same command")
    assert records[-1]["result"] == "interrupted" and "after batch 1/3" in records[-1]["error"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # restored
    with make(heartbeat=60) as ch:
        ch.state = lambda: ["stream2: OUT OF ROTATION (drained by this command)"]
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)
    assert exits == [130]
    err = capsys.readouterr().err
    assert "stopped at once" in err and "stream2: OUT OF ROTATION" in err and "lapses within" in err


def test_an_interrupted_change_exits_130_through_the_cli(monkeypatch):
    from invoke.exceptions import Exit

    from roadie.core.cli import friendly

    @friendly
    def task():
        raise Interrupted("after batch 1/3; resume with the same command")

    with pytest.raises(Exit) as caught:
        task()
    assert caught.value.code == 130 and "resume with the same command" in caught.value.message


def test_the_lease_file_says_who_holds_it_for_what(pipeline):
    make, _, state = pipeline
    with make(ttl=30, heartbeat=60, release="r9", message="why"), open(f"{state}/deploy.lock.json") as handle:
        held = json.load(handle)
    assert held["operation"] == "deploy" and held["release"] == "r9" and held["message"] == "why"


def test_an_error_the_command_put_in_the_detail_is_the_records_one_error(pipeline):
    # A rollback records its outcome's error in the detail, then raises: one `error` field, not a TypeError.
    make, records, _ = pipeline
    with pytest.raises(RoadieError, match="rollback to r1 failed"), make("rollback") as change:
        change.detail.update(done=["stream1"], error="stream2: health gate failed")
        raise RoadieError("rollback to r1 failed: stream2: health gate failed")
    assert records[-1]["result"] == "failed" and records[-1]["error"].startswith("rollback to r1 failed")
    with make("rollback") as change:
        change.detail.update(error="stream2: put back by hand")
    assert records[-1]["error"] == "stream2: put back by hand" and records[-1]["result"] == "ok"


def test_a_lent_connection_is_used_and_left_open_and_a_short_change_opens_no_other(pipeline, monkeypatch):
    make, records, state = pipeline
    opened = []
    monkeypatch.setattr(change_mod.ssh, "connect", lambda host: opened.append(host) or LocalConn())

    class Lent(LocalConn):
        closed = False

        def close(self) -> None:
            self.closed = True

    lent = Lent()
    with make(ttl=30, heartbeat=60, conn=lent) as ch:
        assert ch.conn is lent and _held(state) is not None
    assert opened == [] and not lent.closed                 # the deploy's own connection, still its own
    assert _held(state) is None and [r["result"] for r in records] == ["ok"]
