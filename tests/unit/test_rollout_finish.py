"""Rollout.run's `finish` (a deploy's prune) runs beside the last batch's return to rotation, never beside a
rollback, and its failure comes after the batch is back. Its `before_switch` (a deploy's migrations) runs
beside the first drain, and nothing is switched before it ends. The hosts are stubs: the order of events is what
is checked (the lab's deploy tests run the real thing)."""

import threading
from concurrent.futures import Future

import pytest

from roadie.change import rollout
from roadie.core.errors import RoadieError
from roadie.core.fleet import Fleet
from roadie.deploy.executor import Rollout
from roadie.deploy.types import Options, Outcome

HOSTS = ["stream1", "stream2", "stream3"]


class Stub:
    """A Rollout whose per-host steps only log what they do; `put_back` may wait for an event or fail."""

    def __init__(self, *, put_back_waits_for: threading.Event | None = None, failing_put_back: str = "") -> None:
        self.events: list[str] = []
        self.lock = threading.Lock()
        self.work = Rollout(Fleet(stream=[], balancer=None), Options(), lambda *a, **k: None)
        self.work.running = {h: "r0" for h in HOSTS}
        self.work._guard = lambda label, hosts: None
        self.work._take_out = lambda host: self.log(f"drain {host}")
        self.work._switch_and_gate = self.switch
        self.work._rollback_host = lambda host, previous: self.log(f"rollback {host}") or ""
        self.waits_for, self.failing = put_back_waits_for, failing_put_back

        def put_back(host: str) -> None:
            if host == HOSTS[-1] and self.waits_for is not None:
                assert self.waits_for.wait(10), "finish did not run while the last batch went back"
            if host == self.failing:
                raise RoadieError(f"{host} is not back in rotation")
            self.log(f"enable {host}")

        self.work._put_back = put_back

    def log(self, event: str) -> None:
        with self.lock:
            self.events.append(event)

    def switch(self, host: str, release: str | None) -> None:
        self.work.touched.add(host)
        self.log(f"gate {host}")

    def run(self, finish) -> Outcome:
        outcome = Outcome(release="r1", ok=False)
        self.work.run(rollout.plan("r1", HOSTS, 1), outcome, finish=finish)
        return outcome


def test_finish_runs_beside_the_last_batchs_return_to_rotation_and_run_waits_for_it():
    started = threading.Event()
    stub = Stub(put_back_waits_for=started)

    def finish() -> None:
        stub.log("finish")
        started.set()

    outcome = stub.run(finish)
    assert outcome.done_hosts == HOSTS
    events = stub.events
    # Only after the last host passed its gate, and before it was back in rotation (it waited for finish).
    assert events.index("gate stream3") < events.index("finish") < events.index("enable stream3")
    assert events.count("finish") == 1


def test_a_failing_finish_fails_the_run_once_the_last_batch_is_back():
    stub = Stub()

    def finish() -> None:
        raise RoadieError("stream2: pruning failed: read-only file system")

    outcome = Outcome(release="r1", ok=False)
    with pytest.raises(RoadieError, match="pruning failed"):
        stub.work.run(rollout.plan("r1", HOSTS, 1), outcome, finish=finish)
    assert outcome.done_hosts == HOSTS and outcome.rolled_back == []
    assert "enable stream3" in stub.events and not any(e.startswith("rollback") for e in stub.events)


def test_a_last_batch_that_fails_waits_for_finish_before_its_rollback():
    stub = Stub(failing_put_back="stream3")
    def finish() -> None:
        threading.Event().wait(0.2)   # a slow prune: still running when the last host fails to come back
        stub.log("finish done")

    with pytest.raises(RoadieError, match="stream3 is not back in rotation"):
        stub.run(finish)
    assert stub.events.index("finish done") < stub.events.index("rollback stream3")


def test_no_finish_when_an_earlier_batch_fails():
    stub = Stub(failing_put_back="stream1")
    ran: list[str] = []
    with pytest.raises(RoadieError):
        stub.run(lambda: ran.append("finish"))
    assert ran == [] and "gate stream2" not in stub.events


def _migrations(stub: Stub, fails: bool = False) -> Future:
    """Migrations still running when the first batch starts; they end once the first host is drained."""
    done: Future = Future()
    original = stub.work._take_out

    def take_out(host: str) -> None:
        original(host)
        if host == HOSTS[0] and not done.done():
            stub.log("migrations end")
            if fails:
                done.set_exception(RoadieError("stream1: migrations of r1 failed: relation exists"))
            else:
                done.set_result(None)

    stub.work._take_out = take_out
    return done


def test_the_first_batch_drains_beside_the_migrations_and_switches_only_after_them():
    stub = Stub()
    outcome = Outcome(release="r1", ok=False)
    stub.work.run(rollout.plan("r1", HOSTS, 1), outcome, before_switch=_migrations(stub))
    events = stub.events
    assert events.index("drain stream1") < events.index("migrations end") < events.index("gate stream1")
    assert outcome.done_hosts == HOSTS and "before_switch_s" in outcome.timings[0]
    assert all("before_switch_s" not in t for t in outcome.timings[1:])


def test_failed_migrations_put_the_drained_first_batch_back_unswitched():
    stub = Stub()
    outcome = Outcome(release="r1", ok=False)
    with pytest.raises(RoadieError, match="migrations of r1 failed"):
        stub.work.run(rollout.plan("r1", HOSTS, 1), outcome, before_switch=_migrations(stub, fails=True))
    assert not any(e.startswith("gate") for e in stub.events)
    assert stub.events[-1] == "rollback stream1" and outcome.rolled_back == [] and outcome.done_hosts == []
