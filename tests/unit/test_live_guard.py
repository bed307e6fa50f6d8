"""The live capacity guard counts what HAProxy reports, not what the plan assumed."""

from types import SimpleNamespace

import pytest

from roadie.core.errors import RoadieError
from roadie.core.fleet import Fleet
from roadie.deploy.executor import Rollout
from roadie.deploy.types import Options


def _rollout(states: dict[str, tuple[str, int]], min_serving: int) -> Rollout:
    work = Rollout(Fleet(stream=[], balancer=None), Options(min_serving=min_serving),
                          lambda *a, **k: None)
    servers = {name: SimpleNamespace(in_rotation=status.startswith("UP") and weight > 0)
               for name, (status, weight) in states.items()}
    work.balancer = SimpleNamespace(servers=lambda: servers)
    return work


def test_a_host_already_out_counts_against_the_minimum():
    work = _rollout({"stream1": ("UP", 1), "stream2": ("MAINT", 1), "stream3": ("UP", 1)}, min_serving=2)
    with pytest.raises(RoadieError, match=r"leave 1 hosts serving \(stream3\), below --min-serving 2; "
                                          r"already out of rotation: stream2; this batch was not started"):
        work._guard("batch 1/3", ["stream1"])


def test_a_batch_that_keeps_enough_serving_goes_ahead():
    work = _rollout({"stream1": ("UP", 1), "stream2": ("UP", 1), "stream3": ("DOWN", 1)}, min_serving=1)
    work._guard("batch 1/3", ["stream1"])           # stream2 still serves
    with pytest.raises(RoadieError, match="leave 0 hosts serving"):
        _rollout({"stream1": ("UP", 1), "stream2": ("UP", 0)}, min_serving=1)._guard("batch 1/2", ["stream1"])


def test_a_batch_that_serves_nothing_takes_nothing_away():
    # A fleet's first deploy: no release anywhere, so HAProxy reports every stream host DOWN.
    cold = {"stream1": ("DOWN", 1), "stream2": ("DOWN", 1), "stream3": ("DOWN", 1)}
    _rollout(cold, min_serving=1)._guard("batch 1/3 (canary)", ["stream1"])
    # One host already serving the new release: the next batch may not take it, but may take a DOWN host.
    work = _rollout({"stream1": ("UP", 1), "stream2": ("DOWN", 1), "stream3": ("DOWN", 1)}, min_serving=1)
    work._guard("batch 2/3", ["stream2"])
    with pytest.raises(RoadieError, match="leave 0 hosts serving"):
        work._guard("batch 2/3", ["stream1", "stream2"])
