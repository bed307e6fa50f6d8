"""The deploy lock protocol, run for real by the same script the lock host runs (here: locally)."""

import json
import threading
import time

import pytest
from invoke import Context

from roadie.change import lock
from roadie.core.errors import RoadieError


@pytest.fixture
def conn():
    return Context()


@pytest.fixture
def state(tmp_path):
    return str(tmp_path / "roadie")


def test_acquire_then_second_taker_is_refused_with_the_holder(conn, state):
    held = lock.acquire(conn, "deploy", "r1", "friday fix", state_dir=state, owner="alice@ci")
    with pytest.raises(RoadieError) as err:
        lock.acquire(conn, "deploy", "r2", state_dir=state, owner="bob@laptop")
    message = str(err.value)
    assert "held by alice@ci for deploy r1" in message and "friday fix" in message
    assert "\n" not in message
    held.release()
    lock.acquire(conn, "deploy", "r2", state_dir=state, owner="bob@laptop").release()


def test_expired_lock_is_taken_over_and_reported(conn, state):
    lock.acquire(conn, "deploy", "r1", state_dir=state, owner="crashed@ci", ttl=1)
    time.sleep(1.2)
    taken = lock.acquire(conn, "deploy", "r2", state_dir=state, owner="bob")
    assert taken.replaced is not None and taken.replaced.owner == "crashed@ci"
    taken.release()


def test_only_the_holder_releases_or_renews(conn, state):
    mine = lock.acquire(conn, "deploy", "r1", state_dir=state, owner="alice")
    stolen = lock.Lock(conn, lock.LockInfo("mallory", "deploy", "r1", "", token="guess"), state)  # noqa: S106 - a wrong token on purpose
    stolen.release()  # wrong token: nothing happens
    holder, _ = lock.status(conn, state)
    assert holder.owner == "alice"
    with pytest.raises(RoadieError, match="lost the deploy lock"):
        stolen.renew()
    mine.renew(ttl=600)
    holder, now = lock.status(conn, state)
    assert holder.expires_at - now > 590
    mine.release()
    assert lock.status(conn, state)[0] is None


def test_force_release_returns_the_holder(conn, state):
    lock.acquire(conn, "deploy", "r1", state_dir=state, owner="alice")
    assert lock.force_release(conn, state).owner == "alice"
    assert lock.status(conn, state)[0] is None
    assert lock.force_release(conn, state) is None


def test_forced_acquire_records_what_it_replaced(conn, state):
    lock.acquire(conn, "deploy", "r1", state_dir=state, owner="alice")
    forced = lock.acquire(conn, "rollback", "r0", state_dir=state, owner="oncall", force=True)
    assert forced.replaced.owner == "alice"


def test_concurrent_takers_get_exactly_one_lock(conn, state):
    winners, losers = [], []

    def take(i):
        try:
            winners.append(lock.acquire(Context(), "deploy", f"r{i}", state_dir=state, owner=f"op{i}"))
        except RoadieError:
            losers.append(i)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(losers) == 7


def test_lock_file_holds_owner_time_release_and_message(conn, state, tmp_path):
    lock.acquire(conn, "deploy", "r9", "msg", state_dir=state, owner="alice")
    data = json.loads((tmp_path / "roadie" / "deploy.lock.json").read_text())
    assert {"owner", "operation", "release", "message", "token", "acquired_at", "expires_at"} <= set(data)


def test_bad_ttl(conn, state):
    with pytest.raises(RoadieError, match="TTL"):
        lock.acquire(conn, "deploy", state_dir=state, ttl=0)


@pytest.mark.parametrize("name", ["deploy.lock.json", "deploy.lock.json.tmp", "deploy.lock.guard"])
def test_a_link_planted_in_the_state_directory_is_never_followed(conn, state, tmp_path, name):
    import os
    target = tmp_path / "elsewhere"
    target.write_text("not the lock's\n")
    os.makedirs(state)
    os.symlink(target, os.path.join(state, name))
    with pytest.raises(RoadieError, match="acquire failed: .*symbolic links"):
        lock.acquire(conn, "deploy", "r1", state_dir=state, owner="alice@ci").release()
    assert target.read_text() == "not the lock's\n"


def test_a_fifo_planted_as_the_lock_fails_the_op_instead_of_blocking_it(conn, state):
    import os
    os.makedirs(state)
    os.mkfifo(os.path.join(state, "deploy.lock.json"))
    with pytest.raises(RoadieError, match="acquire failed: .*not a regular file"):
        lock.acquire(conn, "deploy", "r1", state_dir=state, owner="alice@ci").release()
