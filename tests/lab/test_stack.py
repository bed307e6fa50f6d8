"""The whole stack through the balancer: catalogue, audio ranges, plays, failover of a stream host,
and a hitless HAProxy reload under an in-flight audio download."""

import json
import threading
import time
import uuid

import pytest

from roadie.deploy import deploy
from roadie.deploy.balancer import Balancer
from roadie.lab import provision
from tests.lab.hosts import psql_postgres
from tests.lab.traffic import Traffic, get, slow_download


def test_catalogue_is_served_through_the_balancer(stack):
    status, _, body = get(stack["lb"], "/tracks")
    assert status == 200
    tracks = json.loads(body)
    tracks = tracks.get("tracks", tracks) if isinstance(tracks, dict) else tracks
    assert len(tracks) >= 10
    status, _, body = get(stack["lb"], "/healthz")
    health = json.loads(body)
    running = {s.current for s in deploy.host_releases(stack["fleet"])}
    assert status == 200 and health["release"] in running
    assert health["database"] == health["cache"] == "ok"


def test_audio_range_request_returns_exactly_the_requested_bytes(stack):
    status, headers, full = get(stack["lb"], "/tracks/1/audio")
    assert status == 200 and len(full) > 10_000
    status, headers, part = get(stack["lb"], "/tracks/1/audio", {"Range": "bytes=1000-1999"})
    assert status == 206
    assert headers["content-range"] == f"bytes 1000-1999/{len(full)}"
    assert part == full[1000:2000]
    status, headers, _ = get(stack["lb"], "/tracks/1/audio", {"Range": f"bytes={len(full) + 10}-"})
    assert status == 416


def test_a_play_is_stored_on_the_primary_and_replicated(stack, conns):
    listener = f"lab-{uuid.uuid4().hex[:12]}"
    status, _, body = get(stack["lb"], "/plays", {"Content-Type": "application/json"}, "POST",
                          json.dumps({"track_id": 1, "listener_id": listener}).encode())
    assert status == 201, body
    sql = f"SELECT count(*) FROM plays WHERE listener_id = '{listener}'"
    assert psql_postgres(conns("db1"), sql) == "1"
    deadline = time.monotonic() + 5
    while psql_postgres(conns("db2"), sql) != "1":
        assert time.monotonic() < deadline, "play not replicated to db2"
        time.sleep(0.1)


def test_a_stopped_stream_host_leaves_rotation_and_no_request_fails(stack, conns):
    lb = Balancer(conns("lb1"), "stream")
    with Traffic(stack["lb"]) as traffic:
        conns("stream2").run("systemctl stop stream.service", hide=True, in_stream=False)
        deadline = time.monotonic() + 10
        while lb.server("stream2").status.startswith("UP"):
            assert time.monotonic() < deadline, "stream2 still in rotation 10 s after its service stopped"
            time.sleep(0.2)
        time.sleep(2)
        conns("stream2").run("systemctl start stream.service", hide=True, in_stream=False)
        lb.wait_up("stream2", timeout=30)
    assert traffic.report.sent > 50
    assert traffic.report.failed == 0, traffic.report.failures


def test_role_config_change_reloads_haproxy_without_dropping_an_audio_download(stack, conns):
    lb1 = conns("lb1")
    size = len(get(stack["lb"], "/tracks/2/audio")[2])
    master_pid = lb1.run("systemctl show -p MainPID --value haproxy", hide=True, in_stream=False).stdout.strip()
    workers_before = lb1.run(f"pgrep -P {master_pid}", hide=True, in_stream=False).stdout.split()
    release_reader = threading.Event()
    result: dict = {}

    def download():
        # About 45 s of reading for the whole file: far longer than the playbook takes to reload HAProxy.
        result["answer"] = slow_download(stack["lb"], "/tracks/2/audio", bytes_per_tick=max(256, size // 450),
                                         tick=0.1, until=release_reader)

    reader = threading.Thread(target=download)
    reader.start()
    try:
        time.sleep(1)
        run = provision.run("balancer", "lab", echo=False,
                            extra_args=("-e", "haproxy_timeout_http_keep_alive=11s"))
        assert run.ok, run.output[-2000:]
        assert run.recap["lb1"]["changed"] >= 1
        assert reader.is_alive(), "the download finished before the reload: it proves nothing"
    finally:
        release_reader.set()
        reader.join(timeout=60)
        restore = provision.run("balancer", "lab", echo=False)
        assert restore.ok
    status, body, _ = result["answer"]
    assert status == 200 and len(body) == size
    workers_after = lb1.run(f"pgrep -P {master_pid}", hide=True, in_stream=False).stdout.split()
    assert set(workers_after) != set(workers_before), "HAProxy was not reloaded"
    assert lb1.run("systemctl show -p MainPID --value haproxy", hide=True,
                   in_stream=False).stdout.strip() == master_pid, "HAProxy was restarted, not reloaded"


def test_a_configuration_haproxy_cannot_load_fails_the_role_and_the_old_one_keeps_serving(stack, conns):
    # A maxconn above the file limit the master started with: HAProxy alone logs "Loading failure", keeps its
    # old workers and lets systemd report the reload as done.
    lb1 = conns("lb1")
    master_pid = lb1.run("systemctl show -p MainPID --value haproxy", hide=True, in_stream=False).stdout.strip()
    since = lb1.run("date '+%Y-%m-%d %H:%M:%S'", hide=True, in_stream=False).stdout.strip()
    try:
        run = provision.run("balancer", "lab", echo=False, extra_args=("-e", "haproxy_maxconn=16384"))
        assert not run.ok and run.recap["lb1"]["failed"] == 1, run.output[-2000:]
        assert "Unable to reload service haproxy" in run.output, run.output[-2000:]
        journal = lb1.run(f"journalctl -u haproxy --since '{since}' --no-pager", hide=True, in_stream=False).stdout
        assert "could not load the new configuration and kept its old one" in journal, journal[-2000:]
        info = lb1.run("echo 'show info' | socat stdio /run/haproxy/admin.sock", hide=True, in_stream=False).stdout
        assert "\nMaxconn: 8000\n" in info, info                      # the old configuration still serves
        assert get(stack["lb"], "/tracks")[0] == 200
    finally:
        restore = provision.run("balancer", "lab", echo=False)
    assert restore.ok, restore.output[-2000:]
    assert lb1.run("systemctl show -p MainPID --value haproxy", hide=True,
                   in_stream=False).stdout.strip() == master_pid, "HAProxy was restarted, not reloaded"
    config = lb1.run("cat /etc/haproxy/haproxy.cfg", hide=True, in_stream=False).stdout
    assert "\n    maxconn 8000\n" in config


@pytest.fixture(autouse=True)
def _all_stream_hosts_back(stack, conns):
    yield
    lb = Balancer(conns("lb1"), "stream")
    for host in stack["fleet"].stream:
        conns(host.name).run("systemctl start stream.service", hide=True, warn=True, in_stream=False)
        lb.enable(host.name)
        lb.wait_up(host.name, timeout=30)


