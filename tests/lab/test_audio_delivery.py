"""Audio delivered by nginx (issue 16): the service checks each request, nginx sends the bytes. Slow
listeners do not starve the API or the health checks, ranges keep their meaning, nothing outside the media
directory is served, and a deploy still drains and counts the listeners nginx holds."""

from __future__ import annotations

import hashlib
import json
import socket
import time

import pytest

from roadie.deploy import stream_service
from roadie.deploy.balancer import Balancer
from tests.lab.fabrun import fab
from tests.lab.hosts import psql_postgres
from tests.lab.listeners import Listeners, lab_sources
from tests.web import request

MEDIA = "/srv/stream/shared/media"


@pytest.fixture
def one_host_serving(stack, conns):
    """stream2 and stream3 drained for the test: every listener lands on stream1. (Listeners read track 1
    at 28 MiB, big_track_for_module: a file that small buffers swallow whole would leave nginx holding none.)"""
    lb = Balancer(conns("lb1"))
    for name in ("stream2", "stream3"):
        lb.drain(name)
    yield "stream1"
    for name in ("stream2", "stream3"):
        lb.wait_up(name, timeout=30, seen=lb.enable(name))


@pytest.fixture(scope="module")
def track_file(stack, conns):
    """Track 3's file name and bytes, as stream1 has them."""
    name = psql_postgres(conns("db1"), "SELECT audio_file FROM tracks WHERE id = 3")
    data = conns("stream1").sftp().open(f"{MEDIA}/{name}").read()
    return name, data


def test_200_slow_listeners_leave_the_api_livez_and_the_health_gate_answering(stack, conns, big_track_for_module,
                                                                             one_host_serving):
    with lab_sources(8) as sources, Listeners(stack["lb"], "/tracks/1/audio", rate=2048, sources=sources) as crowd:
        crowd.open(200)
        since = time.monotonic()
        for path in ("/tracks", "/tracks/2", "/livez"):
            status, _, _ = request(stack["lb"], 80, "GET", path, timeout=5)
            assert status == 200, path
        gate = stream_service.health_gate(conns("stream1"), stack["manifest"].release_id, passes=3, interval=0.2,
                                          timeout=10)
        assert gate.ok_for(stack["manifest"].release_id)
        assert Balancer(conns("lb1")).server(one_host_serving).in_rotation     # its check still passes
        time.sleep(1.5)
        assert crowd.receiving(since) == 200, crowd.summary()                 # every one still gets audio


def test_one_client_address_is_held_to_its_limits_on_a_host_and_on_the_balancer(stack, conns, big_track_for_module,
                                                                               one_host_serving):
    # streaming_nginx_audio_per_client (32) on one host; haproxy_conn_per_client (64) across the balancer.
    with lab_sources(1) as sources, Listeners(stack["lb"], "/tracks/1/audio", rate=1024, sources=sources) as crowd:
        crowd.open(40)
        assert crowd.summary()["statuses"] == {"200": 32, "429": 8}, crowd.summary()
        for name in ("stream2", "stream3"):
            Balancer(conns("lb1")).enable(name)
        crowd.open(40)     # 80 connections from the address: the balancer refuses past 64, whatever host
        statuses = crowd.summary()["statuses"]
        assert statuses.get("200", 0) <= 64 and statuses["429"] >= 80 - 64, crowd.summary()
    status, _, _ = request(stack["lb"], 80, "GET", "/tracks", timeout=5)     # another address is not held
    assert status == 200


def _stat(lb1, backend: str, server: str) -> dict:
    """One line of HAProxy's `show stat`, read as root from the runtime API."""
    out = lb1.run("echo 'show stat' | socat stdio /run/haproxy/admin.sock", hide=True, in_stream=False).stdout
    head, *rows = out.lstrip("# ").splitlines()
    fields = head.split(",")
    for row in rows:
        values = dict(zip(fields, row.split(","), strict=False))
        if values.get("pxname") == backend and values.get("svname") == server:
            return values
    raise AssertionError(f"{backend}/{server} not in show stat")


def _wait_for(what: str, condition, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return value


def test_a_full_server_queues_requests_serves_them_in_turn_and_drops_those_whose_clients_left(
        stack, conns, big_track_for_module, one_host_serving):
    # Server maxconn 2 for the test (the role sets haproxy_server_maxconn); two listeners fill it.
    lb1 = conns("lb1")
    limit = _stat(lb1, "stream", "stream1")["slim"]
    lb1.run("echo 'set maxconn server stream/stream1 2' | socat stdio /run/haproxy/admin.sock", hide=True,
            in_stream=False)
    served_before = int(_stat(lb1, "stream", "stream1")["stot"])
    queued: list[socket.socket] = []

    def queue_one() -> socket.socket:
        client = socket.create_connection((stack["lb"], 80), timeout=15)
        client.sendall(f"GET /tracks HTTP/1.1\r\nHost: {stack['lb']}\r\nConnection: close\r\n\r\n".encode())
        queued.append(client)
        return client

    try:
        with lab_sources(1) as sources, Listeners(stack["lb"], "/tracks/1/audio", rate=1024,
                                                  sources=sources) as crowd:
            crowd.open(2)
            assert crowd.summary()["statuses"] == {"200": 2}, crowd.summary()
            gone = [queue_one() for _ in range(4)]
            _wait_for("four requests queued behind the full server",
                      lambda: int(_stat(lb1, "stream", "BACKEND")["qcur"]) == 4)
            for client in gone:            # their clients give up while queued (haproxy_timeout_queue is 10 s)
                client.close()
            # option abortonclose: they leave the queue now, not at the queue timeout, and never reach stream1.
            _wait_for("the abandoned requests left the queue",
                      lambda: int(_stat(lb1, "stream", "BACKEND")["qcur"]) == 0, timeout=3)
            waiting = queue_one()
            _wait_for("a fifth request queued", lambda: int(_stat(lb1, "stream", "BACKEND")["qcur"]) == 1)
        # The listeners are gone: the request still waiting is served in its turn.
        answer = waiting.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert int(_stat(lb1, "stream", "stream1")["stot"]) - served_before == 3    # 2 listeners + 1, not 7
    finally:
        for client in queued:
            client.close()
        lb1.run(f"echo 'set maxconn server stream/stream1 {limit}' | socat stdio /run/haproxy/admin.sock",
                hide=True, in_stream=False)


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_ranges_keep_their_meaning_through_nginx(stack, track_file, method):
    name, data = track_file
    status, headers, body = request(stack["lb"], 80, method, "/tracks/3/audio", {"Range": "bytes=100-1099"})
    assert status == 206 and headers["content-range"] == f"bytes 100-1099/{len(data)}"
    assert headers["content-length"] == "1000" and headers["content-type"] == "audio/wav"
    assert "x-accel-redirect" not in headers
    assert body == (data[100:1100] if method == "GET" else b"")
    status, headers, body = request(stack["lb"], 80, method, "/tracks/3/audio", {"Range": "bytes=-10"})
    assert status == 206 and body == (data[-10:] if method == "GET" else b"")
    status, headers, body = request(stack["lb"], 80, method, "/tracks/3/audio", {"Range": "bytes=0-1,5-6"})
    assert status == 200 and headers["content-length"] == str(len(data))        # several ranges: the whole file
    assert headers["accept-ranges"] == "bytes"
    if method == "GET":
        assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()


@pytest.mark.parametrize("spec", ["bytes=5-2", "bytes=99999999-", "bytes=-0", "bytes=x-y"])
def test_a_range_that_selects_nothing_is_still_416(stack, track_file, spec):
    _, data = track_file
    status, headers, _ = request(stack["lb"], 80, "GET", "/tracks/3/audio", {"Range": spec})
    assert status == 416 and headers["content-range"] == f"bytes */{len(data)}"


def test_nothing_outside_the_media_directory_is_served(stack, conns, as_deploy):
    # The deploy user owns the media directory: it can plant a link to a root file there.
    as_deploy("stream1").run(f"ln -sfn /etc/shadow {MEDIA}/planted.wav", hide=True, in_stream=False)
    names = ("planted.wav", "../stream.env", "../../../../etc/passwd")   # absolute paths: the schema refuses
    psql_postgres(conns("db1"), "DELETE FROM tracks WHERE audio_file IN ('" + "', '".join(names) + "')")
    ids = []
    try:
        for name in names:
            ids.append(psql_postgres(conns("db1"), "INSERT INTO tracks (title, artist, duration_ms, audio_file) "
                                                   f"VALUES ('x', 'y', 1, '{name}') RETURNING id").splitlines()[0])
        for track_id in ids:
            status, _, body = request(stack["lb"], 80, "GET", f"/tracks/{track_id}/audio")
            assert status == 404 and b"root:" not in body and b"STREAM_" not in body, (track_id, body[:200])
        # The internal location is never reachable from outside, whatever the path.
        for path in ("/_media/planted.wav", "/_media/../stream.env", "/_media/"):
            status, _, body = request(stack["lb"], 80, "GET", path)
            assert status == 404 and b"root:" not in body, path
    finally:
        if ids:
            psql_postgres(conns("db1"), f"DELETE FROM tracks WHERE id IN ({', '.join(ids)})")
        as_deploy("stream1").run(f"rm -f {MEDIA}/planted.wav", hide=True, in_stream=False)


def test_a_deploy_drains_and_counts_the_listeners_nginx_holds_and_they_outlive_the_restart(stack, big_track_for_module,
                                                                                            tmp_path):
    from tests.lab.test_change_paths import new_release

    artifact, new_id = new_release(tmp_path, "listeners")
    with lab_sources(3) as sources, Listeners(stack["lb"], "/tracks/1/audio", rate=1024, sources=sources) as crowd:
        crowd.open(30)
        assert crowd.summary()["statuses"] == {"200": 30}, crowd.summary()
        result = fab("deploy", "--artifact", str(artifact), "--yes", "--drain-timeout", "2", "--json")
        since = time.monotonic()
        time.sleep(1.5)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
        events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
        counted = {e["host"]: e["sessions"] for e in events if e["event"] == "drain_timeout"}
        # Every host held listeners (leastconn spreads them) and its drain saw them; never silently: each
        # count is in the output and in --json's last line.
        assert set(counted) == {"stream1", "stream2", "stream3"} and sum(counted.values()) >= 30, counted
        assert events[-1]["event"] == "done" and events[-1]["cut_sessions"] == counted
        assert all(f"{n} sessions still open" in result.stdout for n in counted.values())
        # nginx kept sending while each host's service restarted on the new release.
        assert crowd.receiving(since) == 30, crowd.summary()
    status, _, body = request(stack["lb"], 80, "GET", "/livez")
    assert status == 200 and json.loads(body)["release"] == new_id
