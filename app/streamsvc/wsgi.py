"""The WSGI application. gunicorn builds one per worker with `streamsvc.wsgi:create_app()`.

Routes (JSON unless noted; errors are {"error": "..."}):
  GET  /livez                {release, status}: 200 once the process runs with its release loaded; asks no
                             database or cache (the balancer's check: a shared dependency's outage must not
                             take every host out of rotation at once)
  GET  /healthz              {release, database, cache}: 200 when both are "ok", else 503 (the deploy gate)
  GET  /tracks               the catalogue, ordered by id (cached in Redis)
  GET  /tracks/<id>          one track; 400 for an id that is not a positive integer, 404 unknown
  GET  /tracks/<id>/audio    the audio file, with single-range HTTP Range support (see ranges.py); with
                             STREAM_AUDIO_ACCEL the service checks the request (the track, the file inside
                             the media directory, the range) and nginx delivers the bytes
  POST /plays                {"track_id": int, "listener_id": str} -> 201 {id, track_id, listener_id,
                             played_at}; 400 malformed, 404 unknown track, 411/413/415 for the body.
                             Optional header Idempotency-Key ([A-Za-z0-9_-]{1,64}): the same key stores
                             one play (a repeat answers 201 with the stored play and Idempotent-Replayed:
                             true; 409 if the key belongs to another play). Without it the service makes
                             a key per request. A lost database connection (a failover) is retried for
                             STREAM_WRITE_RETRY_SECONDS before 503; the key keeps the retry from storing
                             the play twice.
HEAD is answered wherever GET is. A database that cannot be reached answers 503, never a hang.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from typing import IO, Any
from urllib.parse import quote

from streamsvc import config as config_mod
from streamsvc import metrics
from streamsvc.cache import Cache, client
from streamsvc.db import Database, KeyReused, Unavailable
from streamsvc.http import Environ, HTTPError, Response, Router, StartResponse, error, json_response, read_body
from streamsvc.ranges import RangeNotSatisfiable, parse_range
from streamsvc.validation import MAX_PLAY_BODY, BadRequest, parse_id, parse_idempotency_key, parse_play

log = logging.getLogger("streamsvc")

CHUNK = 64 * 1024
LOG_EVERY = 30.0
# Methods named in the metrics; any other is counted as "other" (a client picks the method: keep labels few).
COUNTED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
CONTENT_TYPES = {".wav": "audio/wav", ".mp3": "audio/mpeg", ".ogg": "audio/ogg", ".oga": "audio/ogg",
                 ".opus": "audio/ogg", ".flac": "audio/flac", ".m4a": "audio/mp4", ".aac": "audio/aac"}


class BoundedFile:
    """The next `length` bytes of an open file: read() stops there; fileno() lets servers sendfile().

    gunicorn's sendfile path starts at the file's current offset and sends Content-Length bytes,
    its fallback (and any other server's file_wrapper) reads through read(), which stops at the end
    of the range.
    """

    def __init__(self, file: IO[bytes], length: int) -> None:
        self._file = file
        self._left = length

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        want = self._left if size is None or size < 0 else min(size, self._left)
        data = self._file.read(want)
        self._left -= len(data)
        return data

    def fileno(self) -> int:
        return self._file.fileno()

    def close(self) -> None:
        self._file.close()


class FileChunks:
    """Iterate a BoundedFile in CHUNK-sized pieces; close() closes the file even if never iterated."""

    def __init__(self, body: BoundedFile) -> None:
        self._body = body

    def __iter__(self) -> FileChunks:
        return self

    def __next__(self) -> bytes:
        data = self._body.read(CHUNK)
        if not data:
            raise StopIteration
        return data

    def close(self) -> None:
        self._body.close()


def _public(track: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": track["id"], "title": track["title"], "artist": track["artist"],
            "duration_ms": track["duration_ms"], "audio": f"/tracks/{track['id']}/audio"}


class StreamApp:
    """The stream service as a WSGI callable; holds its database pool and cache client."""

    def __init__(self, config: config_mod.Config, db: Database | None = None, cache: Cache | None = None) -> None:
        self.config = config
        self.db = db or Database(config.database_url, max_idle=8)
        self.cache = cache or Cache(client(config.redis_url), config.cache_ttl, config.scrub)
        self._warned: dict[str, float] = {}
        self._warn_lock = threading.Lock()
        self.router = Router()
        self.router.add("/livez", get=self.livez)
        self.router.add("/healthz", get=self.healthz)
        self.router.add("/tracks", get=self.tracks)
        self.router.add("/tracks/<track_id>", get=self.track)
        self.router.add("/tracks/<track_id>/audio", get=self.audio)
        self.router.add("/plays", post=self.plays)

    # ------------------------------------------------------------------ plumbing

    def __call__(self, environ: Environ, start_response: StartResponse) -> Any:
        began = time.monotonic()
        method = environ.get("REQUEST_METHOD", "GET").upper()
        path = environ.get("PATH_INFO") or "/"
        try:
            handler, args = self.router.match(method, path)
            response = handler(environ, **args)
        except HTTPError as exc:
            response = exc.response()
        except BadRequest as exc:
            response = error(400, str(exc))
        except Unavailable as exc:
            metrics.DEPENDENCY_ERRORS.labels(dependency="database").inc()
            self._warn("database", f"database unavailable: {exc}")
            response = error(503, "database unavailable")
        except Exception:
            log.error("unhandled error on %s %r\n%s", method, environ.get("PATH_INFO"),
                      self.config.scrub(traceback.format_exc()).rstrip())
            response = error(500, "internal error")
        body = response.body
        if method == "HEAD" and not isinstance(body, bytes):
            close = getattr(body, "close", None)
            if close is not None:
                close()
        start_response(response.status_line, response.headers)
        route = self.router.route(path)
        label = route.path if route is not None else metrics.UNMATCHED
        metrics.REQUESTS.labels(route=label, method=method if method in COUNTED_METHODS else "other",
                                status=str(response.status)).inc()
        metrics.LATENCY.labels(route=label).observe(time.monotonic() - began)
        if method == "HEAD":
            return [b""]
        return [body] if isinstance(body, bytes) else body

    def _warn(self, key: str, message: str) -> None:
        """Log a warning, at most once every LOG_EVERY seconds per key (a dead dependency is polled often)."""
        with self._warn_lock:
            now = time.monotonic()
            if now - self._warned.get(key, float("-inf")) < LOG_EVERY:
                return
            self._warned[key] = now
        log.warning("%s", self.config.scrub(" ".join(message.split())))

    def close(self) -> None:
        self.db.close()
        self.cache.close()

    def _cached(self, key: str, load: Callable[[], Any]) -> Any:
        value = self.cache.get(key)
        if value is None:
            value = load()
            if value is not None:
                self.cache.put(key, value)
        return value

    def _track_row(self, track_id: str) -> dict[str, Any]:
        number = parse_id(track_id)
        row = self._cached(str(number), lambda: self.db.track(number))
        if row is None:
            raise HTTPError(404, "no such track")
        return row

    # ------------------------------------------------------------------ handlers

    def livez(self, environ: Environ) -> Response:
        """Liveness only: no database or cache call, so a database failover keeps every host in rotation."""
        loaded = self.config.release != config_mod.UNKNOWN_RELEASE
        return json_response(200 if loaded else 503, {"release": self.config.release,
                                                      "status": "ok" if loaded else "no release"},
                             [("Cache-Control", "no-store")])

    def healthz(self, environ: Environ) -> Response:
        state = {"release": self.config.release}
        for name, check in (("database", self.db.ping), ("cache", self.cache.ping)):
            try:
                check()
            except Exception as exc:  # any failure means "not ok"; the reason goes to the log
                metrics.DEPENDENCY_ERRORS.labels(dependency=name).inc()
                self._warn(f"health-{name}", f"health: {name} check failed: {type(exc).__name__}: {exc}")
                state[name] = "error"
            else:
                state[name] = "ok"
        ok = state["database"] == "ok" and state["cache"] == "ok"
        return json_response(200 if ok else 503, state, [("Cache-Control", "no-store")])

    def tracks(self, environ: Environ) -> Response:
        rows = self._cached("all", self.db.all_tracks)
        return json_response(200, [_public(r) for r in rows])

    def track(self, environ: Environ, track_id: str) -> Response:
        return json_response(200, _public(self._track_row(track_id)))

    def _audio_path(self, name: Any) -> tuple[str, str] | None:
        """The real path of a track's audio file and that path below the media directory's real path, or
        None when it would leave the media directory."""
        if not isinstance(name, str) or not name or "\x00" in name or os.path.isabs(name):
            return None
        root = os.path.realpath(self.config.media_dir)
        path = os.path.realpath(os.path.join(root, name))
        if path == root or os.path.commonpath([root, path]) != root:
            return None
        return path, os.path.relpath(path, root)

    def audio(self, environ: Environ, track_id: str) -> Response:
        track = self._track_row(track_id)
        found = self._audio_path(track.get("audio_file"))
        if found is None:
            self._warn(f"audio-path-{track['id']}", f"track {track['id']}: audio_file leaves the media directory")
            raise HTTPError(404, "no audio for this track")
        path, inside = found
        try:
            # O_NONBLOCK: a FIFO where a file should be must not hang the thread in open().
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            self._warn(f"audio-open-{track['id']}", f"track {track['id']}: cannot open audio file: {exc.strerror}")
            raise HTTPError(404, "no audio for this track") from None
        file = os.fdopen(fd, "rb")
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise HTTPError(404, "no audio for this track")
            size = info.st_size
            headers = [("Accept-Ranges", "bytes")]
            try:
                wanted = parse_range(environ.get("HTTP_RANGE"), size)
            except RangeNotSatisfiable as exc:
                raise HTTPError(416, str(exc), [*headers, ("Content-Range", f"bytes */{size}")]) from None
            content_type = CONTENT_TYPES.get(os.path.splitext(path)[1].lower(), "application/octet-stream")
            if self.config.audio_accel:
                file.close()   # opened to check it is a readable regular file; nginx opens its own
                metrics.AUDIO_BYTES.inc(size if wanted is None else wanted.length)
                return self._delivered_by_nginx(inside, content_type)
            headers.append(("Content-Type", content_type))
            if wanted is None:
                status, start, length = 200, 0, size
            else:
                status, start, length = 206, wanted.start, wanted.length
                headers.append(("Content-Range", wanted.content_range))
            headers.append(("Content-Length", str(length)))
            metrics.AUDIO_BYTES.inc(length)
            file.seek(start)
            body = BoundedFile(file, length)
            wrapper = environ.get("wsgi.file_wrapper")
            return Response(status, headers, wrapper(body, CHUNK) if wrapper else FileChunks(body))
        except BaseException:
            file.close()
            raise

    def _delivered_by_nginx(self, inside: str, content_type: str) -> Response:
        """Hand a checked file (`inside`: its path below the media directory) to nginx: it serves the same
        request's range from its internal location (max_ranges 1, as parse_range) with sendfile, and no
        service thread waits on a slow listener. The Content-Type set here is the one nginx sends; the rest
        (length, range, Accept-Ranges) is nginx's."""
        return Response(200, [("Content-Type", content_type),
                              ("X-Accel-Redirect", self.config.audio_accel + quote(inside, safe="/"))], b"")

    def plays(self, environ: Environ) -> Response:
        media_type = (environ.get("CONTENT_TYPE") or "").split(";", 1)[0].strip().lower()
        if media_type and media_type != "application/json":
            raise HTTPError(415, "body must be application/json")
        play = parse_play(read_body(environ, MAX_PLAY_BODY))
        key = parse_idempotency_key(environ.get("HTTP_IDEMPOTENCY_KEY")) or uuid.uuid4().hex

        def retrying(attempt: int, exc: BaseException) -> None:
            metrics.WRITE_RETRIES.inc()
            self._warn("plays-retry", f"POST /plays: database write failed (attempt {attempt}), retrying for up to "
                                      f"{self.config.write_retry_seconds} s: {type(exc).__name__}: {exc}")

        try:
            row = self.db.record_play(play.track_id, play.listener_id, key,
                                      retry_for=self.config.write_retry_seconds, on_retry=retrying)
        except KeyReused:
            raise HTTPError(409, "Idempotency-Key already used for another play") from None
        if row is None:
            raise HTTPError(404, "no such track")
        headers = [("Idempotent-Replayed", "true")] if row["replayed"] else []
        if row["attempts"] > 1:
            headers.append(("X-Write-Attempts", str(row["attempts"])))
        if not row["replayed"]:
            metrics.PLAYS.inc()
            # The play is committed; a Redis failure only loses the counter increment (logged).
            self.cache.count_play(play.track_id)
        return json_response(201, {"id": row["id"], "track_id": play.track_id, "listener_id": play.listener_id,
                                   "played_at": row["played_at"].isoformat()}, headers)


def configure_logging() -> None:
    """Log to stderr (the journal under systemd) unless the host process configured logging."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)


def create_app(env: Mapping[str, str] | None = None) -> StreamApp:
    """Build the application from the environment. Connects to nothing yet: a database that is down
    at boot makes /healthz answer 503, it does not stop the worker."""
    configure_logging()
    app = StreamApp(config_mod.from_env(env))
    metrics.started(app.config.release)
    return app
