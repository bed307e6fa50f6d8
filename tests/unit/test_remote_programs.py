"""The programs Roadie sends to hosts (roadie/remote/), run here as a host runs them: the command
roadie.remote.command builds, in `sh -c`, against temporary directories, local servers and sockets."""

from __future__ import annotations

import ast
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from roadie import remote
from roadie.cache import client as redis_client
from roadie.change import lock
from roadie.db import backups as db_backups
from roadie.db import fencing
from roadie.deploy import host_space, stream_host, stream_service
from roadie.remote import disk_usage, fence_marker, list_backups, release_listing
from roadie.status import netpolicy, ops

PROGRAMS = sorted(p.name for p in remote.HERE.glob("*.py") if p.name not in ("__init__.py", *remote.LIBRARIES))


class LocalConn:
    """A host's connection, here: runs the command with this machine's sh and python3."""

    host = "local"

    def __init__(self, env: dict | None = None) -> None:
        self.env = env

    def run(self, command: str, *, in_stream=None, timeout=None, **_kwargs) -> SimpleNamespace:
        stdin = in_stream.read() if isinstance(in_stream, io.StringIO) else ""
        done = subprocess.run(["sh", "-c", command], input=stdin, capture_output=True, text=True, check=False,
                              timeout=timeout or 60, env=self.env)
        return SimpleNamespace(exited=done.returncode, stdout=done.stdout, stderr=done.stderr)


def _run(name: str, *args: object, stdin: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", remote.command(name, *args)], input=stdin, capture_output=True, text=True,
                          check=False, timeout=60, env=env)


# ---------------------------------------------------------------- every program
@pytest.mark.parametrize("name", PROGRAMS)
def test_every_program_is_standard_library_only_and_runs_as_a_script(name):
    tree = ast.parse(remote.source(name))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    assert imported - {"__future__"} <= sys.stdlib_module_names, f"{name} imports {imported}"
    assert ast.get_docstring(tree), f"{name} has no docstring saying who runs it and what it prints"
    assert "if __name__ == \"__main__\":" in remote.source(name)


def test_every_program_a_module_names_is_there():
    named = [lock.PROGRAM, stream_host.LIST_PROGRAM, stream_service.HEALTH_PROGRAM, stream_host.PRUNE_PROGRAM,
             stream_host.STAGE_PROGRAM, host_space.FREE_SPACE_PROGRAM, db_backups.LIST_BACKUPS_PROGRAM,
             fencing.FENCE_PROGRAM, redis_client.REDIS_PROGRAM, ops.DISK_PROGRAM, netpolicy.PROBE_PROGRAM]
    assert set(named) <= set(PROGRAMS)
    with pytest.raises(ValueError, match="no host program"):
        remote.source("../ssh.py")


def test_the_libraries_are_sent_ahead_of_the_programs_that_import_them():
    # release_listing.py: one listing for list_releases.py and for free_space.py's --base.
    for name in (stream_host.LIST_PROGRAM, host_space.FREE_SPACE_PROGRAM):
        defined = {node.name for node in ast.parse(remote.source(name)).body if isinstance(node, ast.FunctionDef)}
        assert {"listing", "target"} <= defined, name
        assert "from roadie" not in remote.source(name)


def test_the_release_checks_are_sent_ahead_of_the_staging_program():
    # release_checks.py: the checks the controller's verify makes too, in the one script the host runs.
    text = remote.source(stream_host.STAGE_PROGRAM)
    defined = {node.name for node in ast.parse(text).body if isinstance(node, ast.FunctionDef | ast.ClassDef)}
    assert {"StageError", "check_members", "check_pins", "check_tree", "stage", "main"} <= defined
    assert "from roadie" not in text


# ---------------------------------------------------------------- deploy_lock.py (also tests/unit/test_lock.py)
def test_the_lock_program_makes_its_directory_and_reports_a_free_lock(tmp_path):
    state = tmp_path / "state"
    done = _run(lock.PROGRAM, "status", state, "{}")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["held"] is None and out["done"] is False and abs(out["now"] - time.time()) < 60
    assert sorted(os.listdir(state)) == ["deploy.lock.guard"]


# ---------------------------------------------------------------- list_releases.py, prune_releases.py
def _release(base: Path, name: str, *, complete: bool = True, venv: str | None = None, mtime: float = 0) -> None:
    path = base / "releases" / name
    path.mkdir(parents=True)
    if venv:
        (base / "venvs" / venv).mkdir(parents=True, exist_ok=True)
        (path / "venv").symlink_to(f"../../venvs/{venv}")
    if complete:
        (path / release_listing.COMPLETE_MARK).touch()
        os.utime(path / release_listing.COMPLETE_MARK, (mtime, mtime))


@pytest.fixture
def stream_base(tmp_path, monkeypatch):
    base = tmp_path / "srv-stream"
    monkeypatch.setattr(stream_host, "BASE", base)
    return base


def test_releases_lists_links_and_complete_releases_oldest_first(stream_base):
    assert stream_host.releases(LocalConn()).as_dict() == {"host": "local", "current": None, "previous": None,
                                                           "kept": []}
    _release(stream_base, "r-new", mtime=3000)
    _release(stream_base, "r-old", mtime=1000)
    _release(stream_base, "r-mid", mtime=2000)
    _release(stream_base, "r-partial", complete=False)
    (stream_base / "current").symlink_to("releases/r-new")
    (stream_base / "previous").symlink_to("releases/r-mid")
    found = stream_host.releases(LocalConn())
    assert (found.current, found.previous, found.kept) == ("r-new", "r-mid", ["r-old", "r-mid", "r-new"])


def test_prune_removes_the_oldest_releases_and_the_venvs_left_unused(stream_base):
    for i, venv in enumerate(["k1", "k1", "k2", "k3", "k3"]):
        _release(stream_base, f"r{i}", venv=venv, mtime=1000 + i)
    (stream_base / "venvs" / "orphan").mkdir()
    (stream_base / "current").symlink_to("releases/r4")
    (stream_base / "previous").symlink_to("releases/r3")
    assert stream_host.prune(LocalConn(), keep=2) == ["r0", "r1", "r2"]
    assert sorted(os.listdir(stream_base / "releases")) == ["r3", "r4"]
    assert sorted(os.listdir(stream_base / "venvs")) == ["k3"]


def test_prune_never_removes_current_or_previous(stream_base):
    for i in range(3):
        _release(stream_base, f"r{i}", venv=f"k{i}", mtime=1000 + i)
    (stream_base / "current").symlink_to("releases/r0")
    (stream_base / "previous").symlink_to("releases/r1")
    assert stream_host.prune(LocalConn(), keep=1) == ["r2"]
    assert sorted(os.listdir(stream_base / "releases")) == ["r0", "r1"]
    assert sorted(os.listdir(stream_base / "venvs")) == ["k0", "k1"]


# ---------------------------------------------------------------- healthz.py
class _Health(BaseHTTPRequestHandler):
    answers = {"/ok": (200, b'{"release": "r2", "database": "ok", "cache": "ok"}'),
               "/down": (503, b'{"release": "r2", "database": "error", "cache": "ok"}'),
               "/html": (502, b"<html>bad gateway</html>"), "/garbled": (200, b"not json")}

    def do_GET(self) -> None:  # http.server's name
        status, body = self.answers[self.path]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def health_url():
    server = HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_health_reads_an_answer_an_error_status_and_no_answer(health_url):
    ok = stream_service.health(LocalConn(), f"{health_url}/ok")
    assert (ok.status, ok.release, ok.database, ok.cache, ok.error) == (200, "r2", "ok", "ok", "")
    assert ok.ok_for("r2")
    down = stream_service.health(LocalConn(), f"{health_url}/down")
    assert (down.status, down.database) == (503, "error") and not down.ok_for("r2")
    html = stream_service.health(LocalConn(), f"{health_url}/html")
    assert (html.status, html.release, html.error) == (502, None, "")
    garbled = stream_service.health(LocalConn(), f"{health_url}/garbled")
    assert garbled.status == 0 and garbled.error.startswith("JSONDecodeError: ")
    refused = stream_service.health(LocalConn(), f"http://127.0.0.1:{_closed_port()}/healthz")
    assert refused.status == 0 and "Connection refused" in refused.error


# ---------------------------------------------------------------- list_backups.py, fence_marker.py
def test_the_backup_listing_keeps_complete_backups_only(tmp_path):
    meta = {"started_at": "2026-01-02T02:30:00Z", "finished_at": "2026-01-02T02:31:00Z",
            "start_wal": "000000010000000000000003", "size_bytes": 123, "sha256": {"base.tar.gz": "ab"}}
    for name in ("20260103T023000Z", "20260102T023000Z", "notabackup", "20260104T023000Z"):
        (tmp_path / name).mkdir()
        (tmp_path / name / list_backups.RECORD).write_text(json.dumps(meta))
    (tmp_path / "20260102T023000Z" / list_backups.REFERENCE).write_text("{}")
    (tmp_path / "20260104T023000Z" / list_backups.RECORD).write_text("{half")   # a backup that died
    (tmp_path / "20260105T023000Z").mkdir()                                     # no record at all
    (tmp_path / "20260106T023000Z").write_text("a file")
    done = _run(db_backups.LIST_BACKUPS_PROGRAM, tmp_path)
    assert done.returncode == 0, done.stderr
    found = [db_backups.Backup(**b) for b in json.loads(done.stdout)]
    assert [(b.name, b.has_reference, b.size_bytes) for b in found] == [
        ("20260102T023000Z", True, 123), ("20260103T023000Z", False, 123)]
    finished = 1767321060   # 2026-01-02T02:31:00Z
    assert abs(found[0].age_s - (time.time() - finished)) < 60
    assert found[0].sha256 == {"base.tar.gz": "ab"}
    assert json.loads(_run(db_backups.LIST_BACKUPS_PROGRAM, tmp_path / "missing").stdout) == []


def test_the_fence_marker_is_written_with_its_directory_and_replaced(tmp_path):
    path = tmp_path / "state" / "postgresql-fenced.json"
    assert _run(fencing.FENCE_PROGRAM, path, '{"by": "a"}').returncode == 0
    assert path.read_text() == '{"by": "a"}\n'
    assert _run(fencing.FENCE_PROGRAM, path, '{"by": "b"}').returncode == 0
    assert path.read_text() == '{"by": "b"}\n'
    fence_marker.write(str(path), "x")
    assert path.read_text() == "x\n"


# ---------------------------------------------------------------- redis_cache.py, against a real redis-server
ADMIN, PASSWORD = "admin", "throw-away-Pa55"  # a throw-away server's


def _redis_server(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    server = shutil.which("redis-server")
    if not server:
        pytest.fail("redis-server is not installed (Debian package redis-server)")
    port = _closed_port()
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                             "no", "--dir", str(tmp_path), "--user", "default", "off",
                             "--user", ADMIN, "on", f">{PASSWORD}", "~*", "&*", "+@all", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        if _redis(port, "PING").stdout.strip() == "PONG":
            return proc, port
        time.sleep(0.05)
    proc.kill()
    pytest.fail("redis-server did not answer")


def _redis(port: int, *words: str) -> subprocess.CompletedProcess:
    return subprocess.run(["redis-cli", "--no-auth-warning", "--user", ADMIN, "-p", str(port), *words],
                          capture_output=True, text=True, check=False, timeout=30,
                          env=dict(os.environ, REDISCLI_AUTH=PASSWORD))


@pytest.fixture
def redis_port(tmp_path):
    proc, port = _redis_server(tmp_path)
    yield port
    proc.terminate()
    proc.wait(timeout=10)


def _cache(port: int, password: str = PASSWORD, **args: object) -> subprocess.CompletedProcess:
    request = {"user": ADMIN, "port": port, "pattern": None, "flush": False, **args}
    return _run(redis_client.REDIS_PROGRAM, json.dumps(request), stdin=password + "\n")


def test_the_cache_probe_counts_and_flushes_only_the_matching_keys(redis_port):
    # More matching keys than one UNLINK takes (500), and one that does not match.
    keys = [word for i in range(1201) for word in (f"tracks:{i}", "x")]
    assert _redis(redis_port, "MSET", *keys, "session:1", "x").stdout.strip() == "OK"
    looked = _cache(redis_port, pattern="tracks:*")
    assert looked.returncode == 0, looked.stderr
    state = redis_client.CacheState(host="cache1", **json.loads(looked.stdout))
    assert (state.role, state.keys, state.matching, state.flushed) == ("master", 1202, 1201, None)
    flushed = json.loads(_cache(redis_port, pattern="tracks:*", flush=True).stdout)
    assert (flushed["flushed"], flushed["keys_after"]) == (1201, 1)
    assert _redis(redis_port, "DBSIZE").stdout.strip() == "1"
    assert json.loads(_cache(redis_port, pattern="*", flush=True).stdout)["keys_after"] == 0


def test_the_cache_probe_refuses_a_wrong_password_and_a_flush_on_a_replica(redis_port, tmp_path):
    wrong = _cache(redis_port, password="wrong")  # noqa: S106 - a wrong password on purpose
    assert wrong.returncode == 1 and wrong.stderr.strip().startswith("redis-cli INFO: ")
    assert "WRONGPASS" in wrong.stderr and len(wrong.stderr.strip().splitlines()) == 1
    replica_dir = tmp_path / "replica"
    replica_dir.mkdir()
    proc, port = _redis_server(replica_dir, "--replicaof", "127.0.0.1", str(_closed_port()))
    try:
        refused = _cache(port, pattern="*", flush=True)
        assert refused.returncode == 1 and refused.stderr.strip() == "this Redis is a replica; flush its master"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ---------------------------------------------------------------- disk_usage.py
def test_disk_usage_reports_real_filesystems_once(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/sda1 {tmp_path} ext4 rw 0 0\n"
                      "proc /proc proc rw 0 0\n"
                      f"/dev/sda1 {tmp_path} ext4 rw,bind 0 0\n"
                      f"/dev/sdb1 {tmp_path}/gone ext4 rw 0 0\n")
    found = disk_usage.usage(str(mounts))
    assert [row["mount"] for row in found] == [str(tmp_path)]
    st = os.statvfs(tmp_path)
    assert found[0]["total"] == st.f_blocks * st.f_frsize
    assert 0 <= found[0]["pct"] <= 100
    done = _run(ops.DISK_PROGRAM)
    assert done.returncode == 0, done.stderr
    assert all(set(row) == {"mount", "total", "used", "avail", "pct"} for row in json.loads(done.stdout))


# ---------------------------------------------------------------- reach_probe.py
def test_the_reach_probe_tells_open_from_refused_in_order():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        targets = [["127.0.0.1", _closed_port()], ["127.0.0.1", listener.getsockname()[1]]]
        done = _run(netpolicy.PROBE_PROGRAM, 2.0, json.dumps(targets))
        assert done.returncode == 0, done.stderr
        assert netpolicy.parse_probe_output(done.stdout, 2) == [netpolicy.REFUSED, netpolicy.OPEN]
