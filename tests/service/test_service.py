"""The stream service in-process against a real PostgreSQL and a real Redis on loopback."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading

import psycopg
import pytest
from streamsvc import migrate, seed
from streamsvc.wsgi import create_app

from tests.service.servers import APP_DIR, DB_PASSWORD, REDIS_PASSWORD, free_port
from tests.service.wsgi_client import call


@pytest.fixture
def app(service_env):
    application = create_app(service_env)
    yield application
    application.close()


@pytest.fixture
def admin_db(postgres):
    with psycopg.connect(postgres.admin_url.rsplit("/", 1)[0] + "/stream", autocommit=True) as conn:
        yield conn


def _audio_bytes(media_dir, track_id: int) -> bytes:
    return (media_dir / seed.catalogue()[track_id - 1].audio_file).read_bytes()


# ------------------------------------------------------------------ health and catalogue


def test_healthz_reports_release_database_and_cache(app):
    result = call(app, "GET", "/healthz")
    assert result.status == 200
    assert result.json() == {"release": "20250101000000-abcdef1", "database": "ok", "cache": "ok"}
    assert result.headers["cache-control"] == "no-store"


def test_tracks_lists_the_seeded_catalogue_and_caches_it(app, redis_server):
    redis_server.admin().delete("tracks:v1:all")
    result = call(app, "GET", "/tracks")
    assert result.status == 200
    tracks = result.json()
    assert [t["id"] for t in tracks] == list(range(1, 13))
    first = seed.catalogue()[0]
    assert tracks[0] == {"id": 1, "title": first.title, "artist": first.artist, "duration_ms": first.duration_ms,
                         "audio": "/tracks/1/audio"}
    assert redis_server.admin().ttl("tracks:v1:all") > 0


def test_one_track_is_served_from_the_cache_until_it_expires(app, admin_db, redis_server):
    redis_server.admin().delete("tracks:v1:2")
    original = call(app, "GET", "/tracks/2").json()["title"]
    admin_db.execute("UPDATE tracks SET title = 'Changed' WHERE id = 2")
    try:
        assert call(app, "GET", "/tracks/2").json()["title"] == original  # cache hit
        redis_server.admin().delete("tracks:v1:2")  # what the TTL does, without waiting for it
        assert call(app, "GET", "/tracks/2").json()["title"] == "Changed"
    finally:
        admin_db.execute("UPDATE tracks SET title = %s WHERE id = 2", (original,))
        redis_server.admin().delete("tracks:v1:2")


@pytest.mark.parametrize(("path", "status"), [
    ("/tracks/999999", 404), ("/tracks/0", 400), ("/tracks/abc", 400), ("/tracks/01", 400), ("/tracks/-1", 400),
    ("/tracks/../etc/passwd", 404), ("/tracks/..", 400), ("/tracks/%2e%2e", 400),
    ("/tracks/99999999999999999999999/audio", 400), ("/tracks/abc/audio", 400), ("/tracks/999/audio", 404),
    ("/nope", 404), ("/tracks/", 404),
])
def test_bad_and_unknown_paths(app, path, status):
    result = call(app, "GET", path)
    assert result.status == status
    assert "error" in result.json()


def test_wrong_method_is_405(app):
    result = call(app, "DELETE", "/tracks/1")
    assert result.status == 405 and result.headers["allow"] == "GET, HEAD"


# ------------------------------------------------------------------ audio and Range


@pytest.mark.parametrize("file_wrapper", [True, False])
def test_audio_without_range_is_the_whole_file(app, media_dir, file_wrapper):
    result = call(app, "GET", "/tracks/1/audio", file_wrapper=file_wrapper)
    data = _audio_bytes(media_dir, 1)
    assert result.status == 200
    assert result.body == data
    assert result.headers["content-length"] == str(len(data))
    assert result.headers["accept-ranges"] == "bytes"
    assert result.headers["content-type"] == "audio/wav"
    assert "content-range" not in result.headers


@pytest.mark.parametrize("file_wrapper", [True, False])
@pytest.mark.parametrize(("spec", "pick"), [
    ("bytes=0-0", lambda d: (0, 0)),
    ("bytes=100-199", lambda d: (100, 199)),
    ("bytes=1000-", lambda d: (1000, len(d) - 1)),
    ("bytes=-500", lambda d: (len(d) - 500, len(d) - 1)),
    ("bytes=70000-9999999", lambda d: (70000, len(d) - 1)),
])
def test_audio_ranges_are_206_with_exact_headers_and_bytes(app, media_dir, spec, pick, file_wrapper):
    data = _audio_bytes(media_dir, 3)
    start, end = pick(data)
    result = call(app, "GET", "/tracks/3/audio", headers={"Range": spec}, file_wrapper=file_wrapper)
    assert result.status == 206
    assert result.headers["content-range"] == f"bytes {start}-{end}/{len(data)}"
    assert result.headers["content-length"] == str(end - start + 1)
    assert result.body == data[start:end + 1]


@pytest.mark.parametrize("spec", ["bytes=999999999-", "bytes=5-2", "bytes=-0", "bytes=x-y", "bytes="])
def test_unsatisfiable_or_malformed_ranges_are_416(app, media_dir, spec):
    size = len(_audio_bytes(media_dir, 3))
    result = call(app, "GET", "/tracks/3/audio", headers={"Range": spec})
    assert result.status == 416
    assert result.headers["content-range"] == f"bytes */{size}"


def test_multi_range_gets_the_whole_file(app, media_dir):
    result = call(app, "GET", "/tracks/3/audio", headers={"Range": "bytes=0-1,5-6"})
    assert result.status == 200 and result.body == _audio_bytes(media_dir, 3)


def test_head_gives_the_headers_without_the_body(app, media_dir):
    result = call(app, "HEAD", "/tracks/4/audio", headers={"Range": "bytes=10-19"})
    assert result.status == 206 and result.body == b""
    assert result.headers["content-length"] == "10"


def test_audio_never_leaves_the_media_directory(app, admin_db, media_dir, tmp_path):
    secret = tmp_path / "outside.wav"
    secret.write_bytes(b"not for you")
    (media_dir / "link.wav").symlink_to(secret)
    os.mkfifo(media_dir / "fifo.wav")
    names = [os.path.relpath(secret, media_dir), str(secret).lstrip("/"), "link.wav", "missing.wav", ".",
             "fifo.wav"]
    ids = []
    try:
        for name in names:
            ids.append(admin_db.execute(
                "INSERT INTO tracks (title, artist, duration_ms, audio_file) VALUES ('x', 'y', 1, %s) RETURNING id",
                (name,)).fetchone()[0])
        for track_id in ids:
            result = call(app, "GET", f"/tracks/{track_id}/audio")
            assert result.status == 404, result
            assert b"not for you" not in result.body
    finally:
        admin_db.execute("DELETE FROM tracks WHERE id = ANY(%s)", (ids,))
        (media_dir / "link.wav").unlink()
        (media_dir / "fifo.wav").unlink()


@pytest.fixture
def accel_app(service_env):
    application = create_app({**service_env, "STREAM_AUDIO_ACCEL": "/_media/"})
    yield application
    application.close()


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_with_nginx_delivering_the_service_checks_then_hands_over_the_file(accel_app, media_dir, method):
    track = seed.catalogue()[2]
    result = call(accel_app, method, "/tracks/3/audio", headers={"Range": "bytes=10-19"})
    # nginx serves the range of the same request from its internal location; the service sends no byte.
    assert result.status == 200 and result.body == b""
    assert result.headers["x-accel-redirect"] == f"/_media/{track.audio_file}"
    assert result.headers["content-type"] == "audio/wav" and "content-length" not in result.headers


def test_with_nginx_delivering_bad_ranges_and_paths_are_still_the_services_answer(accel_app, admin_db, media_dir,
                                                                                tmp_path):
    size = len(_audio_bytes(media_dir, 3))
    refused = call(accel_app, "GET", "/tracks/3/audio", headers={"Range": "bytes=5-2"})
    assert refused.status == 416 and refused.headers["content-range"] == f"bytes */{size}"
    assert "x-accel-redirect" not in refused.headers
    secret = tmp_path / "outside.wav"
    secret.write_bytes(b"not for you")
    (media_dir / "away.wav").symlink_to(secret)
    ids = []
    try:
        for name in ("away.wav", os.path.relpath(secret, media_dir), "missing.wav"):
            ids.append(admin_db.execute(
                "INSERT INTO tracks (title, artist, duration_ms, audio_file) VALUES ('x', 'y', 1, %s) RETURNING id",
                (name,)).fetchone()[0])
        for track_id in ids:
            result = call(accel_app, "GET", f"/tracks/{track_id}/audio")
            assert result.status == 404 and "x-accel-redirect" not in result.headers, result
    finally:
        admin_db.execute("DELETE FROM tracks WHERE id = ANY(%s)", (ids,))
        (media_dir / "away.wav").unlink()


def test_a_media_name_that_needs_escaping_is_escaped_in_the_redirect(accel_app, admin_db, media_dir):
    (media_dir / "a b?c#d.wav").write_bytes(b"RIFF")
    track_id = admin_db.execute(
        "INSERT INTO tracks (title, artist, duration_ms, audio_file) VALUES ('x', 'y', 1, 'a b?c#d.wav') RETURNING id"
    ).fetchone()[0]
    try:
        result = call(accel_app, "GET", f"/tracks/{track_id}/audio")
        assert result.headers["x-accel-redirect"] == "/_media/a%20b%3Fc%23d.wav"
    finally:
        admin_db.execute("DELETE FROM tracks WHERE id = %s", (track_id,))
        (media_dir / "a b?c#d.wav").unlink()


# ------------------------------------------------------------------ plays


def test_a_play_is_stored_and_counted(app, admin_db, redis_server):
    before = int(redis_server.admin().get("plays:5") or 0)
    result = call(app, "POST", "/plays", headers={"Content-Type": "application/json"},
                  body=json.dumps({"track_id": 5, "listener_id": "fan-1"}).encode())
    assert result.status == 201
    play = result.json()
    assert play["track_id"] == 5 and play["listener_id"] == "fan-1" and play["id"] >= 1
    row = admin_db.execute("SELECT track_id, listener_id FROM plays WHERE id = %s", (play["id"],)).fetchone()
    assert row == (5, "fan-1")
    assert int(redis_server.admin().get("plays:5")) == before + 1


def test_a_chunked_play_body_is_accepted(app):
    result = call(app, "POST", "/plays", body=b'{"track_id": 1, "listener_id": "c"}', chunked=True)
    assert result.status == 201


@pytest.mark.parametrize(("body", "headers", "status"), [
    (b"{not json", {}, 400),
    (b'{"track_id": "5", "listener_id": "fan"}', {}, 400),
    (b'{"track_id": 5, "listener_id": "../../etc"}', {}, 400),
    (b'{"track_id": 999999, "listener_id": "fan"}', {}, 404),
    (b'{"track_id": 5, "listener_id": "fan"}', {"Content-Type": "text/plain"}, 415),
    (b" " * 5000, {}, 413),
    (None, {}, 411),
])
def test_bad_plays_are_refused(app, admin_db, body, headers, status):
    before = admin_db.execute("SELECT count(*) FROM plays").fetchone()[0]
    result = call(app, "POST", "/plays", headers=headers, body=body)
    assert result.status == status
    assert "\n" not in result.json()["error"]
    assert admin_db.execute("SELECT count(*) FROM plays").fetchone()[0] == before


# ------------------------------------------------------------------ failures of the dependencies


def test_a_dead_redis_degrades_to_the_database(service_env, admin_db, caplog):
    env = {**service_env, "STREAM_REDIS_URL": f"redis://stream:{REDIS_PASSWORD}@127.0.0.1:{free_port()}/0"}
    app = create_app(env)
    try:
        health = call(app, "GET", "/healthz")
        assert health.status == 503 and health.json()["cache"] == "error" and health.json()["database"] == "ok"
        assert call(app, "GET", "/tracks").status == 200
        assert call(app, "GET", "/tracks/6").json()["id"] == 6
        assert call(app, "GET", "/tracks/6/audio", headers={"Range": "bytes=0-3"}).body == b"RIFF"
        result = call(app, "POST", "/plays", body=b'{"track_id": 6, "listener_id": "no-redis"}')
        assert result.status == 201
        assert admin_db.execute("SELECT count(*) FROM plays WHERE listener_id = 'no-redis'").fetchone()[0] == 1
    finally:
        app.close()
    assert REDIS_PASSWORD not in caplog.text


def test_a_wrong_redis_password_is_a_cache_error(service_env, redis_server):
    app = create_app({**service_env, "STREAM_REDIS_URL": redis_server.url(password="wrong")})  # noqa: S106
    try:
        health = call(app, "GET", "/healthz")
        assert health.status == 503 and health.json()["cache"] == "error"
        assert call(app, "GET", "/tracks/1").status == 200
    finally:
        app.close()


def test_a_dead_database_answers_503_not_a_hang(service_env, caplog):
    env = {**service_env, "STREAM_DATABASE_URL": f"postgresql://stream:{DB_PASSWORD}@127.0.0.1:{free_port()}/stream"}
    app = create_app(env)
    try:
        health = call(app, "GET", "/healthz")
        assert health.status == 503
        assert health.json() == {"release": "20250101000000-abcdef1", "database": "error", "cache": "ok"}
        assert call(app, "POST", "/plays", body=b'{"track_id": 1, "listener_id": "x"}').status == 503
        assert call(app, "GET", "/tracks/424242").json() == {"error": "database unavailable"}
    finally:
        app.close()
    assert DB_PASSWORD not in caplog.text


def test_the_service_reconnects_after_the_database_and_redis_restart(app, postgres, redis_server, caplog):
    caplog.set_level(logging.WARNING)
    assert call(app, "GET", "/healthz").status == 200
    assert call(app, "GET", "/tracks/7").status == 200  # now cached, and a connection is pooled
    postgres.stop()
    try:
        health = call(app, "GET", "/healthz")
        assert health.status == 503 and health.json()["database"] == "error"
        assert call(app, "GET", "/tracks/7").status == 200  # the cache still answers
        assert call(app, "POST", "/plays", body=b'{"track_id": 7, "listener_id": "x"}').status == 503
    finally:
        postgres.start()
    assert call(app, "GET", "/healthz").status == 200
    assert call(app, "POST", "/plays", body=b'{"track_id": 7, "listener_id": "after"}').status == 201
    redis_server.stop()
    try:
        assert call(app, "GET", "/healthz").json()["cache"] == "error"
    finally:
        redis_server.start()
    assert call(app, "GET", "/healthz").status == 200
    # Restarts between two requests: the pooled connections are stale, the next request still works.
    postgres.stop()
    postgres.start()
    redis_server.stop()
    redis_server.start()
    assert call(app, "POST", "/plays", body=b'{"track_id": 7, "listener_id": "after2"}').status == 201
    assert call(app, "GET", "/healthz").status == 200
    assert DB_PASSWORD not in caplog.text and REDIS_PASSWORD not in caplog.text


# ------------------------------------------------------------------ migrations, seed, CLI


def _fresh_database(postgres, name: str) -> str:
    postgres.admin(f'DROP DATABASE IF EXISTS "{name}"')
    postgres.admin(f'CREATE DATABASE "{name}" OWNER stream')
    return postgres.url(db=name)


def test_migrate_twice_applies_each_migration_once(service_env):
    assert migrate.migrate(service_env["STREAM_DATABASE_URL"], say=lambda _line: None) == []


def test_concurrent_migrate_runs_do_not_race(postgres):
    url = _fresh_database(postgres, "racing")
    results, errors = [], []

    def run():
        try:
            results.append(migrate.migrate(url, say=lambda _line: None))
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(len(r) for r in results) == [0, 0, 0, len(migrate.discover())]
    with psycopg.connect(url) as conn:
        applied = conn.execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall()
        assert applied == [(m.version,) for m in migrate.discover()]


def test_a_failing_migration_leaves_nothing_and_a_changed_one_is_refused(postgres, tmp_path):
    url = _fresh_database(postgres, "failing")
    (tmp_path / "0001_one.sql").write_text("CREATE TABLE one (id int);\n")
    (tmp_path / "0002_two.sql").write_text("CREATE TABLE two (id int);\nSELECT no_such_function();\n")
    with pytest.raises(migrate.MigrationError, match="0002_two failed, nothing of it was applied") as caught:
        migrate.migrate(url, tmp_path, say=lambda _line: None)
    assert "\n" not in str(caught.value)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT to_regclass('two')").fetchone() == (None,)
        assert conn.execute("SELECT version FROM schema_migrations").fetchall() == [(1,)]
    (tmp_path / "0002_two.sql").write_text("CREATE TABLE two (id int);\n")
    assert [m.label for m in migrate.migrate(url, tmp_path, say=lambda _line: None)] == ["0002_two"]
    (tmp_path / "0001_one.sql").write_text("CREATE TABLE one (id bigint);\n")
    with pytest.raises(migrate.MigrationError, match="0001_one was changed after it was applied"):
        migrate.migrate(url, tmp_path, say=lambda _line: None)


def test_badly_named_migrations_are_refused(tmp_path):
    (tmp_path / "1_first.sql").write_text("SELECT 1;")
    with pytest.raises(migrate.MigrationError, match="NNNN_name.sql"):
        migrate.discover(tmp_path)


def test_seed_is_idempotent(service_env, media_dir, admin_db):
    assert seed.seed_database(service_env["STREAM_DATABASE_URL"]) == (0, 0)
    assert seed.write_media(media_dir) == []
    assert admin_db.execute("SELECT count(*) FROM tracks").fetchone()[0] == 12


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamsvc", *args], cwd=APP_DIR, capture_output=True, text=True,
                          env={"PATH": os.environ["PATH"], **env}, timeout=60)


def test_cli_migrate_seed_and_health_with_an_env_file(service_env, tmp_path):
    env_file = tmp_path / "stream.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in service_env.items()))
    result = _cli("--env-file", str(env_file), "migrate", env={})
    assert result.returncode == 0 and "up to date" in result.stdout
    result = _cli("--env-file", str(env_file), "seed", "--media-dir", str(tmp_path / "media"), env={})
    assert result.returncode == 0, result.stderr
    assert "12 audio files written" in result.stdout and "0 inserted, 0 updated" in result.stdout
    result = _cli("--env-file", str(env_file), "health", env={})
    assert result.returncode == 0 and json.loads(result.stdout)["database"] == "ok"


def test_cli_errors_are_one_line_without_the_password(service_env):
    env = {**service_env, "STREAM_DATABASE_URL": service_env["STREAM_DATABASE_URL"].replace("pg-Pa55", "wrong")}
    result = _cli("migrate", env=env)
    assert result.returncode == 1
    assert result.stderr.startswith("streamsvc: error: ") and result.stderr.count("\n") == 1
    assert "password authentication failed" in result.stderr
    assert "wrong" not in result.stderr and DB_PASSWORD not in result.stderr
    assert _cli("migrate", env={}).stderr == "streamsvc: error: STREAM_DATABASE_URL is not set\n"

