"""The production server: gunicorn with app/gunicorn.conf.py on a loopback port, spoken to over HTTP."""

from __future__ import annotations

import http.client
import json
from urllib.parse import quote

import psycopg
import pytest
from streamsvc import seed

from tests.service.gunicorn_server import start_gunicorn
from tests.service.servers import DB_PASSWORD, REDIS_PASSWORD, free_port


@pytest.fixture(scope="module")
def server(service_env, tmp_path_factory):
    running = start_gunicorn(service_env, tmp_path_factory.mktemp("gunicorn"))
    yield running
    assert running.stop() == 0
    text = running.log.read_text()
    for secret in (DB_PASSWORD, REDIS_PASSWORD, quote(DB_PASSWORD, safe=""), quote(REDIS_PASSWORD, safe="")):
        assert secret not in text


def test_gunicorn_serves_health_and_catalogue(server):
    status, headers, body = server.request("GET", "/healthz")
    assert status == 200
    assert json.loads(body) == {"release": "20250101000000-abcdef1", "database": "ok", "cache": "ok"}
    status, _, body = server.request("GET", "/tracks")
    assert status == 200 and len(json.loads(body)) == 12


def test_gunicorn_serves_ranges(server, media_dir):
    data = (media_dir / seed.catalogue()[8].audio_file).read_bytes()
    status, headers, body = server.request("GET", "/tracks/9/audio", {"Range": "bytes=1000-70999"})
    assert status == 206
    assert headers["content-range"] == f"bytes 1000-70999/{len(data)}"
    assert headers["content-length"] == "70000" and body == data[1000:71000]
    status, headers, body = server.request("GET", "/tracks/9/audio")
    assert status == 200 and body == data and headers["accept-ranges"] == "bytes"
    status, headers, _ = server.request("GET", "/tracks/9/audio", {"Range": f"bytes={len(data)}-"})
    assert status == 416 and headers["content-range"] == f"bytes */{len(data)}"
    status, headers, body = server.request("HEAD", "/tracks/9/audio")
    assert status == 200 and body == b"" and headers["content-length"] == str(len(data))


def test_gunicorn_records_a_play(server):
    status, _, body = server.request("POST", "/plays", {"Content-Type": "application/json"},
                                     b'{"track_id": 9, "listener_id": "over-http"}')
    assert status == 201 and json.loads(body)["listener_id"] == "over-http"
    status, _, _ = server.request("POST", "/plays", {"Content-Type": "application/json"}, b"x" * 10_000)
    assert status == 413


def test_a_long_audio_response_does_not_block_other_requests(server, media_dir, postgres):
    """A listener that stops reading holds one thread; health checks still answer."""
    big = media_dir / "big.bin"
    with open(big, "wb") as out:
        out.truncate(64 * 1024 * 1024)  # sparse: far more than the socket buffers take
    with psycopg.connect(postgres.admin_url.rsplit("/", 1)[0] + "/stream", autocommit=True) as db:
        track_id = db.execute("INSERT INTO tracks (title, artist, duration_ms, audio_file) "
                              "VALUES ('big', 'big', 1, 'big.bin') RETURNING id").fetchone()[0]
        slow = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            slow.request("GET", f"/tracks/{track_id}/audio")
            response = slow.getresponse()
            assert response.status == 200 and response.read(65536) == bytes(65536)
            # The first response is far from done; three more requests still get answers.
            for _ in range(3):
                assert server.request("GET", "/healthz")[0] == 200
        finally:
            slow.close()
            db.execute("DELETE FROM tracks WHERE id = %s", (track_id,))
            big.unlink()


def test_gunicorn_boots_and_answers_503_while_the_database_is_down(service_env, tmp_path):
    env = {**service_env,
           "STREAM_DATABASE_URL": f"postgresql://stream:{quote(DB_PASSWORD, safe='')}@127.0.0.1:{free_port()}/stream"}
    down = start_gunicorn(env, tmp_path)
    try:
        status, _, body = down.request("GET", "/healthz")
        assert status == 503
        assert json.loads(body) == {"release": "20250101000000-abcdef1", "database": "error", "cache": "ok"}
        assert down.process.poll() is None
    finally:
        assert down.stop() == 0
    assert DB_PASSWORD not in down.log.read_text()
