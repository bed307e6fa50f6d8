"""The rolling-deploy planner: batches, canary first, capacity guard."""

import pytest

from roadie.change import rollout
from roadie.core.errors import RoadieError


def hosts(n):
    return [f"stream{i}" for i in range(1, n + 1)]


def test_plan_never_drains_more_than_one_host_of_three():
    plan = rollout.plan("r1", hosts(3), batch=1)
    assert [b.hosts for b in plan.batches] == [("stream1",), ("stream2",), ("stream3",)]
    assert [b.serving for b in plan.batches] == [2, 2, 2]
    assert plan.batches[0].canary and not plan.batches[1].canary


def test_canary_goes_alone_then_batches_of_the_requested_size():
    plan = rollout.plan("r1", hosts(12), batch=4)
    assert [len(b.hosts) for b in plan.batches] == [1, 4, 4, 3]
    assert plan.batches[0].hosts == ("stream1",)
    assert sum(len(b.hosts) for b in plan.batches) == 12


def test_without_a_canary_the_first_batch_is_full_size():
    plan = rollout.plan("r1", hosts(4), batch=2, canary=False)
    assert [b.hosts for b in plan.batches] == [("stream1", "stream2"), ("stream3", "stream4")]
    assert not any(b.canary for b in plan.batches)


@pytest.mark.parametrize("spec, total, size", [("25%", 12, 3), ("50%", 3, 1), ("10%", 3, 1), ("100%", 4, 4),
                                               (2, 12, 2), ("30", 12, 12)])
def test_batch_size_from_count_or_percentage(spec, total, size):
    assert rollout.batch_size(spec, total) == size


@pytest.mark.parametrize("spec", ["0", "0%", "101%", "-1", "two", "1.5", ""])
def test_bad_batch_specs_are_refused(spec):
    with pytest.raises(RoadieError, match="--batch"):
        rollout.batch_size(spec, 10)


def test_capacity_guard_refuses_plans_below_min_serving():
    with pytest.raises(RoadieError, match="below --min-serving 2"):
        rollout.plan("r1", hosts(3), batch=2, min_serving=2)
    with pytest.raises(RoadieError, match="impossible with 3 hosts"):
        rollout.plan("r1", hosts(3), min_serving=3)
    plan = rollout.plan("r1", hosts(3), batch=1, min_serving=2)
    assert min(b.serving for b in plan.batches) >= 2


@pytest.mark.parametrize("batch, size_of", [("1", lambda n: 1), ("2", lambda n: min(2, n)),
                                             ("25%", lambda n: max(1, n // 4)), ("50%", lambda n: max(1, n // 2))])
def test_every_step_keeps_min_serving(batch, size_of):
    refused = []
    for n in range(2, 25):
        size = size_of(n)
        if n - size < 1:
            # Batches that would take every host out at once are refused, never planned.
            with pytest.raises(RoadieError, match="below --min-serving 1"):
                rollout.plan("r", hosts(n), batch=batch, min_serving=1)
            refused.append(n)
            continue
        plan = rollout.plan("r", hosts(n), batch=batch, min_serving=1)
        assert all(b.serving >= 1 for b in plan.batches)
        assert [h for b in plan.batches for h in b.hosts] == hosts(n)
        assert plan.batches[0].hosts == ("stream1",) and plan.batches[0].canary
        assert max(len(b.hosts) for b in plan.batches) == size
    # Only two hosts in batches of two leave nobody serving.
    assert refused == ([2] if batch == "2" else [])


def test_single_host_needs_min_serving_zero():
    with pytest.raises(RoadieError, match="impossible"):
        rollout.plan("r1", ["stream1"], min_serving=1)
    plan = rollout.plan("r1", ["stream1"], min_serving=0)
    assert [b.hosts for b in plan.batches] == [("stream1",)] and not plan.batches[0].canary


def test_duplicate_and_empty_host_lists_are_refused():
    with pytest.raises(RoadieError, match="twice"):
        rollout.plan("r1", ["a", "a"])
    with pytest.raises(RoadieError, match="no hosts"):
        rollout.plan("r1", [])


def test_describe_shows_batches_and_capacity():
    lines = rollout.plan("r1", hosts(3)).describe()
    assert lines[0].startswith("release r1 to 3 hosts in 3 batches")
    assert lines[1] == "  batch 1 (canary): stream1  -> 2 serving"
