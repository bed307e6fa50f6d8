"""Hostile requests to the stream service: each gets the right 4xx, never a 5xx, never a byte from outside
the media directory, and never a change to the data it was not meant to make.

A canary file sits beside the media directory (and a catalogue row points at it through `..`): its bytes
must appear in no response. In-process requests go through wsgiref's validator; the ones only a real
server sees (raw request lines, encoded slashes, NUL bytes, oversized lines and headers) go to gunicorn.
"""

from __future__ import annotations

import io
import json
import os
import socket
from wsgiref.util import setup_testing_defaults

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from streamsvc import seed
from streamsvc.validation import MAX_ID
from streamsvc.wsgi import create_app

from tests.service.gunicorn_server import start_gunicorn
from tests.service.wsgi_client import call

# Random bytes no response may contain (long enough that a chance match is impossible).
CANARY = os.urandom(24).hex().encode() + b"-roadie-canary-outside-the-media-dir"
SQL_PAYLOADS = ["1' OR '1'='1", "1; DROP TABLE plays; --", "1)--", "' UNION SELECT password FROM pg_shadow --",
                "1/**/OR/**/1=1", "%27%20OR%201%3D1", "$$; DROP TABLE tracks; $$", "\\x27", "1\x00' OR 1=1"]


@pytest.fixture(scope="module")
def canary(media_dir):
    """A file beside the media directory, and symlinks/rows that point at it from inside."""
    path = media_dir.parent / "canary.wav"
    path.write_bytes(CANARY)
    yield path
    path.unlink()


@pytest.fixture(scope="module")
def admin(postgres):
    with psycopg.connect(postgres.admin_url.rsplit("/", 1)[0] + "/stream", autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def app(service_env, canary):
    application = create_app(service_env)
    yield application
    application.close()


@pytest.fixture(scope="module")
def canary_track(admin, canary, media_dir):
    """A catalogue row whose audio_file climbs out of the media directory to the canary."""
    track_id = admin.execute("INSERT INTO tracks (title, artist, duration_ms, audio_file) "
                             "VALUES ('canary', 'x', 1, %s) RETURNING id",
                             (os.path.relpath(canary, media_dir),)).fetchone()[0]
    yield track_id
    # Property tests may have played it (any existing track id is fair game): those plays go first.
    admin.execute("DELETE FROM plays WHERE track_id = %s", (track_id,))
    admin.execute("DELETE FROM tracks WHERE id = %s", (track_id,))


@pytest.fixture(scope="module")
def server(service_env, canary, tmp_path_factory):
    running = start_gunicorn(service_env, tmp_path_factory.mktemp("gunicorn-hostile"))
    yield running
    assert running.stop() == 0


def _counts(admin) -> tuple[int, int]:
    return admin.execute("SELECT (SELECT count(*) FROM tracks), (SELECT count(*) FROM plays)").fetchone()


def _clean(status: int, body: bytes, allowed: set[int]) -> None:
    assert status in allowed, (status, body[:200])
    assert status < 500
    assert CANARY not in body


def _raw(server, request: bytes) -> tuple[int, bytes]:
    """Send bytes as they are (no client-side normalisation) and read the status and the whole answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    answer = b"".join(chunks)
    assert answer.startswith(b"HTTP/1."), answer[:200]
    return int(answer.split(b" ", 2)[1]), answer


# ------------------------------------------------------------------ path traversal


TRAVERSAL_IDS = [
    ("..", 400), ("...", 400), ("%2e%2e", 400), ("%2e%2e%2f%2e%2e%2fcanary.wav", 400), ("..%2fcanary.wav", 400),
    ("..%5c..%5ccanary.wav", 400), ("..\\..\\canary.wav", 400), ("canary.wav", 400), ("1%00", 400),
    ("1\x00", 400), ("1\x00/../../canary.wav", 404), ("%00", 400), ("1.wav", 400), ("~", 400),
    ("0x1", 400), ("1e3", 400), ("\uff11", 400), ("9" * 10_000, 400), ("1" * 19, 404),
    (str(MAX_ID + 1), 400), ("-1", 400), ("+1", 400), (" 1", 400),
]


@pytest.mark.parametrize(("segment", "status"), TRAVERSAL_IDS)
@pytest.mark.parametrize("suffix", ["", "/audio"])
def test_hostile_track_ids_never_leave_the_media_directory(app, canary, segment, status, suffix):
    result = call(app, "GET", f"/tracks/{segment}{suffix}")
    _clean(result.status, result.body, {status})
    assert "error" in result.json()


@pytest.mark.parametrize("path", [
    "/tracks/../../canary.wav", "/tracks/1/../../../canary.wav", "/tracks/1/audio/../../canary.wav",
    "/../canary.wav", "//etc/passwd", "/tracks//audio", "/tracks/1/audio/", "/tracks/1/audio/x",
    "/etc/passwd", "/tracks/" + "../" * 500 + "canary.wav",
])
def test_paths_that_climb_are_404(app, canary, path):
    result = call(app, "GET", path)
    _clean(result.status, result.body, {404})


def test_a_catalogue_row_pointing_outside_is_404_not_the_file(app, canary_track):
    for headers in ({}, {"Range": "bytes=0-"}, {"Range": "bytes=-5"}):
        result = call(app, "GET", f"/tracks/{canary_track}/audio", headers=headers)
        _clean(result.status, result.body, {404})


@pytest.mark.parametrize("target", [
    b"/tracks/%2e%2e%2f%2e%2e%2fcanary.wav/audio", b"/tracks/..%2f..%2fcanary.wav/audio",
    b"/tracks/%2e%2e/%2e%2e/canary.wav", b"/tracks/1/audio/..%2f..%2f..%2fcanary.wav",
    b"/tracks/%252e%252e%252fcanary.wav/audio", b"/tracks/1%00/audio", b"/tracks/%00/audio",
    b"/tracks/..%c0%af..%c0%afcanary.wav/audio", b"/tracks/%ff%fe/audio",
])
def test_encoded_traversal_over_http_is_4xx(server, canary, target):
    status, answer = _raw(server, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    _clean(status, answer, {400, 404})


@pytest.mark.parametrize(("request_bytes", "statuses"), [
    (b"GET /tracks/1\x00/audio HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", {400}),
    (b"GET /tracks/" + b"1" * 5000 + b"/audio HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", {400, 414}),
    (b"GET ../../canary.wav HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", {400, 404}),
    (b"GET /tracks/3/audio HTTP/1.1\r\nHost: x\r\nRange: bytes=" + b"1" * 9000 + b"-\r\n"
     b"Connection: close\r\n\r\n", {400, 431}),
    (b"GET /tracks/3/audio HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\nRange: bytes=5-6\r\n"
     b"Connection: close\r\n\r\n", {200, 206, 400, 416}),
    (b"GET /tracks/3/audio HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\x00\r\nConnection: close\r\n\r\n", {400, 416}),
])
def test_malformed_requests_over_http_are_4xx(server, canary, request_bytes, statuses):
    status, answer = _raw(server, request_bytes)
    _clean(status, answer, statuses)


# ------------------------------------------------------------------ Range


def _audio(media_dir, track_id: int) -> bytes:
    return (media_dir / seed.catalogue()[track_id - 1].audio_file).read_bytes()


@pytest.mark.parametrize(("spec", "status"), [
    ("bytes=99999999999999999999-", 416), ("bytes=-99999999999999999999", 416),
    ("bytes=0-99999999999999999999", 416), ("bytes=9223372036854775807-", 416),
    ("bytes=-9223372036854775807", 206), ("bytes=0-9223372036854775807", 206),
    ("bytes=-5--3", 416), ("bytes=5-3", 416), ("bytes=0-1\r\nX-Injected: 1", 416), ("bytes=0-1\x00", 416),
    ("bytes=\u0661-\u0662", 416), ("bytes=0x10-0x20", 416), ("bytes=1e3-", 416), ("bytes=0-1;", 416),
    ("bytes=" + "1" * 100_000 + "-", 416), ("bytes=" + "0-1," * 20_000 + "0-1", 200),
    ("bytes=" + " " * 10_000 + "0-1", 206), ("=" * 5000, 416), ("bytes" * 5000, 416), ("", 416),
    ("\x00", 416), ("bytes=0-1' OR '1'='1", 416), ("items=0-5", 200), ("BYTES=0-0", 206),
])
def test_malformed_and_huge_ranges(app, media_dir, canary, spec, status):
    data = _audio(media_dir, 3)
    result = call(app, "GET", "/tracks/3/audio", headers={"Range": spec})
    _clean(result.status, result.body, {status})
    assert "x-injected" not in result.headers
    if status == 416:
        assert result.headers["content-range"] == f"bytes */{len(data)}" and b"error" in result.body
    elif status == 200:
        assert result.body == data
    else:
        first, last = (int(x) for x in result.headers["content-range"].split(" ")[1].split("/")[0].split("-"))
        assert result.body == data[first:last + 1]


@given(spec=st.text(max_size=60) | st.from_regex(r"\A[bBytes]{0,6}=?[0-9 ,+\-]{0,30}\Z"))
def test_any_range_header_is_a_slice_of_the_file_or_416(app, media_dir, canary, spec):
    data = _audio(media_dir, 2)
    result = call(app, "GET", "/tracks/2/audio", headers={"Range": spec})
    _clean(result.status, result.body, {200, 206, 416})
    if result.status == 200:
        assert result.body == data
    elif result.status == 206:
        first, last = (int(x) for x in result.headers["content-range"].split(" ")[1].split("/")[0].split("-"))
        assert 0 <= first <= last < len(data) and result.body == data[first:last + 1]
    else:
        assert result.headers["content-range"] == f"bytes */{len(data)}"


# ------------------------------------------------------------------ POST /plays


def _post(app, body: bytes | None, content_type: str | None = "application/json", **headers: str):
    if content_type is not None:
        headers["Content-Type"] = content_type
    return call(app, "POST", "/plays", headers=headers, body=body)


PLAY = {"track_id": 1, "listener_id": "fan"}


@pytest.mark.parametrize(("body", "content_type", "status"), [
    # wrong content types
    (json.dumps(PLAY).encode(), "text/plain", 415),
    (json.dumps(PLAY).encode(), "application/x-www-form-urlencoded", 415),
    (json.dumps(PLAY).encode(), "multipart/form-data; boundary=x", 415),
    (json.dumps(PLAY).encode(), "application/json-patch+json", 415),
    (json.dumps(PLAY).encode(), "application/xml", 415),
    (b"track_id=1&listener_id=fan", "application/x-www-form-urlencoded", 415),
    # not JSON, or not an object
    (b"", "application/json", 400), (b"{", "application/json", 400), (b"\xff\xfe{}", "application/json", 400),
    (b"\x00" * 100, "application/json", 400), (b"null", "application/json", 400),
    (b'[{"track_id": 1, "listener_id": "fan"}]', "application/json", 400),
    (b'{"track_id": 1, "listener_id": "fan"} trailing', "application/json", 400),
    (b"{'track_id': 1, 'listener_id': 'fan'}", "application/json", 400),
    (b'{"track_id": NaN, "listener_id": "fan"}', "application/json", 400),
    (b'{"track_id": Infinity, "listener_id": "fan"}', "application/json", 400),
    # deep nesting, under and over the size limit
    (b"[" * 2000 + b"]" * 2000, "application/json", 400),
    (b'{"track_id": ' + b"[" * 1900 + b"]" * 1900 + b', "listener_id": "fan"}', "application/json", 400),
    (b'{"a":' * 600 + b"1" + b"}" * 600, "application/json", 400),
    (b"[" * 100_000 + b"]" * 100_000, "application/json", 413),
    # huge numbers
    (b'{"track_id": 1e400, "listener_id": "fan"}', "application/json", 400),
    (b'{"track_id": -1e400, "listener_id": "fan"}', "application/json", 400),
    (b'{"track_id": ' + b"9" * 4000 + b', "listener_id": "fan"}', "application/json", 400),
    (json.dumps({"track_id": 2**64, "listener_id": "fan"}).encode(), "application/json", 400),
    (json.dumps({"track_id": MAX_ID + 1, "listener_id": "fan"}).encode(), "application/json", 400),
    (json.dumps({"track_id": MAX_ID, "listener_id": "fan"}).encode(), "application/json", 404),
    (json.dumps({"track_id": 1.5, "listener_id": "fan"}).encode(), "application/json", 400),
    (json.dumps({"track_id": 1.0, "listener_id": "fan"}).encode(), "application/json", 400),
    # wrong types
    (json.dumps({"track_id": "1", "listener_id": "fan"}).encode(), "application/json", 400),
    (json.dumps({"track_id": True, "listener_id": "fan"}).encode(), "application/json", 400),
    (json.dumps({"track_id": None, "listener_id": "fan"}).encode(), "application/json", 400),
    (json.dumps({"track_id": [1], "listener_id": "fan"}).encode(), "application/json", 400),
    (json.dumps({"track_id": {"$gt": 0}, "listener_id": "fan"}).encode(), "application/json", 400),
    (json.dumps({"track_id": 1, "listener_id": ["fan"]}).encode(), "application/json", 400),
    (json.dumps({"track_id": 1, "listener_id": 123}).encode(), "application/json", 400),
    (json.dumps({"track_id": 1, "listener_id": "fan\u0000"}).encode(), "application/json", 400),
    (json.dumps({"track_id": 1, "listener_id": "x" * 10_000}).encode(), "application/json", 413),
    (json.dumps({"track_id": 1, "listener_id": "fan", "__proto__": {}}).encode(), "application/json", 400),
    (b'{"track_id": 1, "track_id": "x", "listener_id": "fan"}', "application/json", 400),
])
def test_malformed_play_bodies_are_4xx_and_store_nothing(app, admin, body, content_type, status):
    before = _counts(admin)
    result = _post(app, body, content_type)
    _clean(result.status, result.body, {status})
    assert "\n" not in result.json()["error"]
    assert _counts(admin) == before


@pytest.mark.parametrize(("headers", "body", "status"), [
    ({"Content-Length": "1000000000000"}, b"{}", 413),
    ({"Content-Length": "99999999999999999999999999"}, b"{}", 413),
    ({"Content-Length": "-1"}, b"{}", 400),
    ({"Content-Length": "0x10"}, b"{}", 400),
    ({"Content-Length": "1e3"}, b"{}", 400),
    ({"Content-Length": "\u0661\u0662"}, b"{}", 400),
    ({"Content-Length": "100"}, b"{}", 400),
])
def test_lying_content_lengths_are_4xx(app, admin, headers, body, status):
    before = _counts(admin)
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/plays", "CONTENT_TYPE": "application/json",
               "CONTENT_LENGTH": headers["Content-Length"], "wsgi.input": io.BytesIO(body)}
    setup_testing_defaults(environ)
    seen = {}
    chunks = app(environ, lambda s, h, e=None: seen.update(status=int(s.split()[0])))
    _clean(seen["status"], b"".join(chunks), {status})
    assert _counts(admin) == before


def test_an_oversized_chunked_body_is_413(app, admin):
    before = _counts(admin)
    result = call(app, "POST", "/plays", body=b" " * 100_000 + json.dumps(PLAY).encode(), chunked=True)
    _clean(result.status, result.body, {413})
    assert _counts(admin) == before


def test_oversized_and_malformed_bodies_over_http(server, admin):
    before = _counts(admin)
    for headers, body, statuses in [
        (b"Content-Type: application/json\r\nContent-Length: 10000000\r\n", b"{" * 100, {413}),
        (b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n",
         b"".join(b"1000\r\n" + b"[" * 4096 + b"\r\n" for _ in range(4)) + b"0\r\n\r\n", {413}),
        (b"Content-Type: application/json\r\nContent-Length: 5\r\nContent-Length: 7\r\n", b"{}", {400}),
        (b"Content-Type: application/json\r\nContent-Length: -5\r\n", b"{}", {400}),
    ]:
        status, answer = _raw(server, b"POST /plays HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + headers
                              + b"\r\n" + body)
        _clean(status, answer, statuses)
    assert _counts(admin) == before


# ------------------------------------------------------------------ SQL metacharacters in every parameter


@pytest.mark.parametrize("payload", SQL_PAYLOADS)
def test_sql_metacharacters_in_every_parameter_are_refused(app, admin, canary, payload):
    before = _counts(admin)
    quoted = payload.replace("/", "%2F")
    for path in (f"/tracks/{quoted}", f"/tracks/{quoted}/audio"):
        result = call(app, "GET", path)
        _clean(result.status, result.body, {400, 404})
    result = call(app, "GET", "/tracks/1/audio", headers={"Range": f"bytes={payload}"})
    _clean(result.status, result.body, {416})
    for body in ({"track_id": payload, "listener_id": "fan"}, {"track_id": 1, "listener_id": payload},
                 {payload: 1, "track_id": 1, "listener_id": "fan"}):
        result = _post(app, json.dumps(body).encode())
        _clean(result.status, result.body, {400})
    result = _post(app, json.dumps(PLAY).encode(), **{"Idempotency-Key": payload})
    _clean(result.status, result.body, {400})
    assert _counts(admin) == before
    assert admin.execute("SELECT to_regclass('public.plays') IS NOT NULL AND "
                         "to_regclass('public.tracks') IS NOT NULL").fetchone()[0]


# ------------------------------------------------------------------ properties of the whole request path

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
                           max_leaves=8)
listeners = st.from_regex(r"\A[A-Za-z0-9_-]{1,64}\Z")


@given(segment=st.text(min_size=1, max_size=40).filter(lambda s: "/" not in s))
def test_any_track_id_segment_is_a_track_or_4xx(app, canary, segment):
    result = call(app, "GET", f"/tracks/{segment}/audio")
    _clean(result.status, result.body, {200, 400, 404})
    if result.status == 200:
        assert segment.isascii() and segment.isdigit()


@given(track_id=json_values | st.integers(min_value=-10, max_value=30), listener_id=json_values | listeners,
       key=st.none() | st.text(max_size=70) | listeners)
def test_any_play_is_stored_once_or_refused_with_4xx(app, admin, track_id, listener_id, key):
    headers = {} if key is None else {"Idempotency-Key": key}
    before = _counts(admin)[1]
    result = _post(app, json.dumps({"track_id": track_id, "listener_id": listener_id}).encode(), **headers)
    _clean(result.status, result.body, {201, 400, 404, 409})
    after = _counts(admin)[1]
    if result.status == 201:
        play = result.json()
        assert play["track_id"] == track_id and play["listener_id"] == listener_id
        assert after - before in (0, 1)  # 0: a replayed Idempotency-Key
    else:
        assert after == before
