"""On-purpose drains (roadie.change.rotation), run for real by the program the lock host runs (locally, tmp dir)."""

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from roadie.change import rotation
from roadie.core.errors import RoadieError
from roadie.core.paths import ROOT
from roadie.remote import rotation_state


class LocalConn:
    """The lock host's connection, here: runs the command with this machine's python3."""

    host = "lock host"

    def run(self, command: str, *, hide: bool, warn: bool, in_stream: bool) -> SimpleNamespace:
        done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=False,
                              stdin=subprocess.DEVNULL, timeout=60)
        return SimpleNamespace(exited=done.returncode, stdout=done.stdout, stderr=done.stderr)


@pytest.fixture
def conn():
    return LocalConn()


@pytest.fixture
def state(tmp_path):
    return str(tmp_path / "roadie")


def _files(state: str) -> list[str]:
    return sorted(os.listdir(state))


def test_record_list_and_clear(conn, state):
    before = time.time()
    rotation.record(conn, "stream2", "alice@laptop", "kernel upgrade", state_dir=state)
    rotation.record(conn, "stream3", "bob@ci", "", state_dir=state)
    seen = rotation.on_purpose(conn, state_dir=state)
    assert list(seen) == ["stream2", "stream3"]
    assert seen["stream2"].by == "alice@laptop" and seen["stream2"].why == "kernel upgrade"
    assert before - 1 <= seen["stream2"].at <= time.time() + 1
    assert seen["stream2"].describe() == "drained by alice@laptop: kernel upgrade"
    assert seen["stream3"].describe() == "drained by bob@ci: no message"
    assert rotation.clear(conn, "stream2", state_dir=state) is True
    assert rotation.clear(conn, "stream2", state_dir=state) is False
    assert list(rotation.on_purpose(conn, state_dir=state)) == ["stream3"]
    # Only the record and its lock file: no temporary file is left behind; the record is not world-readable.
    assert _files(state) == ["drained.json", "drained.json.lock"]
    assert stat.S_IMODE(os.stat(os.path.join(state, "drained.json")).st_mode) == 0o640
    assert set(json.loads(Path(state, "drained.json").read_text())) == {"stream3"}


def test_a_second_record_replaces_the_first(conn, state):
    rotation.record(conn, "stream1", "alice", "disk", state_dir=state)
    rotation.record(conn, "stream1", "bob", "memory", state_dir=state)
    seen = rotation.on_purpose(conn, state_dir=state)
    assert [(d.host, d.by, d.why) for d in seen.values()] == [("stream1", "bob", "memory")]


def test_no_file_means_no_host_drained_on_purpose(conn, state):
    assert rotation.on_purpose(conn, state_dir=state) == {}
    assert rotation.clear(conn, "stream1", state_dir=state) is False


def test_a_link_planted_at_drained_json_is_refused_and_its_target_untouched(conn, state, tmp_path):
    os.makedirs(state)
    target = tmp_path / "authorized_keys"
    target.write_text("ssh-ed25519 AAAA precious\n")
    os.symlink(target, os.path.join(state, "drained.json"))
    for call in (lambda: rotation.record(conn, "stream1", "alice", "x", state_dir=state),
                 lambda: rotation.clear(conn, "stream1", state_dir=state),
                 lambda: rotation.on_purpose(conn, state_dir=state)):
        with pytest.raises(RoadieError) as err:
            call()
        assert "symbolic link" in str(err.value) and "\n" not in str(err.value)
    assert target.read_text() == "ssh-ed25519 AAAA precious\n"
    assert os.path.islink(os.path.join(state, "drained.json"))


def test_a_link_at_the_lock_file_or_the_state_dir_is_refused(conn, state, tmp_path):
    os.makedirs(state)
    target = tmp_path / "elsewhere"
    target.write_text("keep\n")
    os.symlink(target, os.path.join(state, "drained.json.lock"))
    with pytest.raises(RoadieError, match="drained.json.lock: it is a symbolic link"):
        rotation.record(conn, "stream1", "alice", "x", state_dir=state)
    assert target.read_text() == "keep\n"

    real = tmp_path / "real"
    real.mkdir()
    linked = str(tmp_path / "linked")
    os.symlink(real, linked)
    with pytest.raises(RoadieError, match="not a directory"):
        rotation.record(conn, "stream1", "alice", "x", state_dir=linked)
    assert list(real.iterdir()) == []


def test_a_fifo_at_drained_json_is_refused_without_hanging(conn, state):
    os.makedirs(state)
    os.mkfifo(os.path.join(state, "drained.json"))
    with pytest.raises(RoadieError, match="not a regular file"):
        rotation.on_purpose(conn, state_dir=state)


@pytest.mark.parametrize("content, expected", [
    ("{not json", "is not valid JSON"),
    ('["stream1"]', "is not a map of host to {by, why, at}"),
    ('{"stream1": {"by": "a", "why": "b"}}', "is not a map of host to {by, why, at}"),
    (b"\xff\xfe", "is not valid JSON"),
])
def test_a_malformed_file_gives_one_line_and_is_left_as_it_is(conn, state, content, expected):
    os.makedirs(state)
    path = os.path.join(state, "drained.json")
    with open(path, "wb") as f:
        f.write(content if isinstance(content, bytes) else content.encode())
    for call in (lambda: rotation.on_purpose(conn, state_dir=state),
                 lambda: rotation.record(conn, "stream2", "alice", "x", state_dir=state)):
        with pytest.raises(RoadieError) as err:
            call()
        message = str(err.value)
        assert expected in message and "fix or remove it" in message and "\n" not in message
        assert message.startswith("on-purpose drains on lock host: ")
    with open(path, "rb") as f:
        assert f.read() == (content if isinstance(content, bytes) else content.encode())


@pytest.mark.parametrize("payload, expected", [
    ({"host": "", "by": "a", "why": "b"}, "bad 'host'"),
    ({"host": "stream1", "by": 3, "why": "b"}, "bad 'by'"),
    ({"host": "stream1", "by": "a", "why": "x" * 1001}, "bad 'why'"),
])
def test_bad_requests_are_refused_and_nothing_is_written(state, payload, expected):
    with pytest.raises(rotation_state.StateError, match=expected):
        rotation_state.apply("record", state, payload)
    assert not os.path.exists(os.path.join(state, "drained.json"))


_WRITER = """
import sys
from roadie.remote import rotation_state
state, prefix, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    rotation_state.apply("record", state, {"host": f"{prefix}{i}", "by": prefix, "why": "load"})
"""


def test_two_concurrent_writers_lose_no_record(conn, state):
    n = 40
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, state, prefix, str(n)], cwd=ROOT)
               for prefix in ("a", "b")]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    seen = rotation.on_purpose(conn, state_dir=state)
    assert set(seen) == {f"{p}{i}" for p in ("a", "b") for i in range(n)}
    assert _files(state) == ["drained.json", "drained.json.lock"]
