"""The service's own Prometheus metrics.

Under gunicorn every worker counts into prometheus_client's multiprocess files in PROMETHEUS_MULTIPROC_DIR
(gunicorn.conf.py empties it when the master starts), and the master serves their sum on STREAM_METRICS_BIND,
an address of its own that nginx and the balancer never forward to. Without PROMETHEUS_MULTIPROC_DIR (one
process: the in-process tests) the default registry counts.

Labels stay few: the route is the router's pattern (`/tracks/<track_id>`), never the path asked for.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

UNMATCHED = "unmatched"   # the route label of a path no route matches (404)

# Time to the response head: an audio body streams for minutes and says nothing of how fast we answered.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = Counter("streamsvc_requests", "Requests answered, by route pattern, method and status.",
                   ["route", "method", "status"])
LATENCY = Histogram("streamsvc_request_duration_seconds", "Seconds from the request to its response head.",
                    ["route"], buckets=LATENCY_BUCKETS)
AUDIO_BYTES = Counter("streamsvc_audio_bytes", "Audio bytes answered: sent by the service, or by nginx on the "
                      "service's X-Accel-Redirect (the checked range's length).")
PLAYS = Counter("streamsvc_plays_recorded", "Plays stored (a replayed Idempotency-Key is not counted again).")
DEPENDENCY_ERRORS = Counter("streamsvc_dependency_errors", "Failed calls to the database or the cache.",
                            ["dependency"])
WRITE_RETRIES = Counter("streamsvc_write_retries", "Play writes tried again after a lost database connection.")
RELEASE = Gauge("streamsvc_release_info", "The release the service runs (always 1).", ["release"],
                multiprocess_mode="livemax")


def started(release: str) -> None:
    """Called once per process when the app is built: the release it runs."""
    RELEASE.labels(release=release).set(1)

