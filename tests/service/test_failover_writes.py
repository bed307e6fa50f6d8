"""What the stream service does for a database failover: /livez asks no dependency, POST /plays retries
a write across a lost connection and never stores a play twice (idempotency key)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import psycopg
import pytest
from streamsvc.db import Database
from streamsvc.wsgi import create_app

from tests.service.servers import DB_PASSWORD, free_port
from tests.service.wsgi_client import call

PLAY = {"Content-Type": "application/json"}


@pytest.fixture
def admin_db(postgres):
    with psycopg.connect(postgres.admin_url.rsplit("/", 1)[0] + "/stream", autocommit=True) as conn:
        yield conn


def _play(app, listener: str, key: str | None = None, track: int = 3):
    headers = dict(PLAY, **({"Idempotency-Key": key} if key else {}))
    return call(app, "POST", "/plays", headers=headers,
                body=json.dumps({"track_id": track, "listener_id": listener}).encode())


def test_livez_answers_without_the_database_or_the_cache(service_env):
    dead = {**service_env,
            "STREAM_DATABASE_URL": f"postgresql://stream:{DB_PASSWORD}@127.0.0.1:{free_port()}/stream",
            "STREAM_REDIS_URL": f"redis://stream:x@127.0.0.1:{free_port()}/0"}
    app = create_app(dead)
    try:
        live = call(app, "GET", "/livez")
        assert live.status == 200
        assert live.json() == {"release": "20250101000000-abcdef1", "status": "ok"}
        assert live.headers["cache-control"] == "no-store"
        assert call(app, "GET", "/healthz").status == 503  # the deploy gate still sees the outage
    finally:
        app.close()


def test_livez_is_503_without_a_release(service_env, monkeypatch):
    monkeypatch.setattr("streamsvc.config.MANIFEST", Path(service_env["STREAM_MEDIA_DIR"]) / "none.json")
    env = {k: v for k, v in service_env.items() if k != "STREAM_RELEASE_ID"}
    app = create_app(env)
    try:
        assert app.config.release == "unknown"
        assert call(app, "GET", "/livez").status == 503
    finally:
        app.close()


def test_the_same_idempotency_key_stores_one_play(service_env, admin_db):
    app = create_app(service_env)
    try:
        first = _play(app, "idem", key="key-one")
        again = _play(app, "idem", key="key-one")
        assert first.status == again.status == 201
        assert "idempotent-replayed" not in first.headers
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json() == first.json()
        assert admin_db.execute("SELECT count(*) FROM plays WHERE request_key = 'key-one'").fetchone()[0] == 1
        other = _play(app, "someone-else", key="key-one")
        assert other.status == 409
        assert _play(app, "idem", key="bad key!").status == 400
    finally:
        app.close()


def test_plays_without_a_key_each_get_their_own(service_env, admin_db):
    app = create_app(service_env)
    try:
        ids = {_play(app, "no-key").json()["id"] for _ in range(3)}
        assert len(ids) == 3
        keys = admin_db.execute("SELECT count(DISTINCT request_key) FROM plays WHERE listener_id = 'no-key' "
                                "AND request_key IS NOT NULL").fetchone()[0]
        assert keys == 3
    finally:
        app.close()


def test_a_write_is_retried_across_a_database_outage_and_stored_once(service_env, postgres, admin_db):
    app = create_app({**service_env, "STREAM_WRITE_RETRY_SECONDS": "20"})
    try:
        assert _play(app, "warm").status == 201   # a pooled connection that the stop breaks
        postgres.stop()
        results = {}
        writer = threading.Thread(target=lambda: results.update(r=_play(app, "retried", key="retry-1")))
        try:
            writer.start()
            time.sleep(1.5)  # the write is failing and retrying now
            assert writer.is_alive()
        finally:
            postgres.start()
        writer.join(30)
        result = results["r"]
        assert result.status == 201, result.body
        assert int(result.headers["x-write-attempts"]) > 1
        with psycopg.connect(postgres.admin_url.rsplit("/", 1)[0] + "/stream", autocommit=True) as conn:
            rows = conn.execute("SELECT listener_id FROM plays WHERE request_key = 'retry-1'").fetchall()
        assert rows == [("retried",)]
    finally:
        app.close()


def test_a_write_gives_up_with_503_after_the_retry_window(service_env):
    env = {**service_env, "STREAM_DATABASE_URL": f"postgresql://stream:{DB_PASSWORD}@127.0.0.1:{free_port()}/stream",
           "STREAM_WRITE_RETRY_SECONDS": "1"}
    app = create_app(env)
    try:
        result = _play(app, "gone")
        assert result.status == 503 and result.json() == {"error": "database unavailable"}
    finally:
        app.close()


def test_a_retried_insert_whose_commit_landed_is_not_stored_twice(postgres, service_env, admin_db):
    # The retry after a lost answer is the same INSERT with the same key: it finds the stored row.
    db = Database(service_env["STREAM_DATABASE_URL"])
    try:
        first = db.record_play(4, "lost-answer", "commit-landed")
        second = db.record_play(4, "lost-answer", "commit-landed")
        assert first["id"] == second["id"] and not first["replayed"] and second["replayed"]
        count = admin_db.execute("SELECT count(*) FROM plays WHERE request_key = 'commit-landed'").fetchone()[0]
        assert count == 1
    finally:
        db.close()
