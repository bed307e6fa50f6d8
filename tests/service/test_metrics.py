"""The service's metrics under gunicorn: two workers count, the master serves the sum on a listener of its own,
the app's own port has no /metrics, and a killed worker loses no count."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.service.gunicorn_server import start_gunicorn
from tests.service.servers import APP_DIR, free_port, wait_for
from tests.web import request

RELEASE = "20250101000000-abcdef1"


@pytest.fixture(scope="module")
def metered(service_env, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("metrics")
    (workdir / "prom").mkdir()
    # A count left from an earlier master: the new one must not add it to its own.
    (workdir / "prom" / "counter_1.db").write_bytes(b"stale")
    port = free_port()
    env = {**service_env, "STREAM_METRICS_BIND": f"127.0.0.1:{port}",
           "PROMETHEUS_MULTIPROC_DIR": str(workdir / "prom")}
    server = start_gunicorn(env, workdir, workers=2)
    wait_for(lambda: _scrape(port) is not None, "the metrics listener")
    yield server, port
    assert server.stop() == 0


def _scrape(port: int) -> dict[tuple[str, tuple], float] | None:
    try:
        status, _, body = request("127.0.0.1", port, "GET", "/metrics", timeout=10)
    except OSError:
        return None
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _workers(master: int) -> list[int]:
    return [int(pid) for pid in Path(f"/proc/{master}/task/{master}/children").read_text().split()]


def test_the_master_serves_every_workers_counts_by_route_and_the_app_port_has_no_metrics(metered):
    server, port = metered
    before = _scrape(port)
    for _ in range(6):
        assert server.request("GET", "/tracks")[0] == 200
    assert server.request("GET", "/tracks/12")[0] == 200
    assert server.request("GET", "/tracks/999")[0] == 404
    assert server.request("GET", "/no/such/place")[0] == 404
    assert server.request("BREW", "/tracks")[0] == 405
    status, headers, _ = server.request("GET", "/tracks/9/audio", {"Range": "bytes=0-9999"})
    assert status == 206
    status, _, body = server.request("POST", "/plays", {"Content-Type": "application/json"},
                                     json.dumps({"track_id": 9, "listener_id": "metered"}).encode())
    assert status == 201
    # The app's own port serves no metrics: what the balancer forwards never reaches them.
    assert server.request("GET", "/metrics")[0] == 404
    after = _scrape(port)

    def grew(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert grew("streamsvc_requests_total", route="/tracks", method="GET", status="200") == 6
    assert grew("streamsvc_requests_total", route="/tracks/<track_id>", method="GET", status="200") == 1
    assert grew("streamsvc_requests_total", route="/tracks/<track_id>", method="GET", status="404") == 1
    assert grew("streamsvc_requests_total", route="unmatched", method="GET", status="404") == 2  # + /metrics
    assert grew("streamsvc_requests_total", route="/tracks", method="other", status="405") == 1
    assert grew("streamsvc_requests_total", route="/plays", method="POST", status="201") == 1
    assert grew("streamsvc_audio_bytes_total") == 10_000
    assert grew("streamsvc_plays_recorded_total") == 1
    assert grew("streamsvc_request_duration_seconds_count", route="/tracks") == 7        # the 405 too
    assert _value(after, "streamsvc_release_info", release=RELEASE) == 1
    # No label carries a path as asked: the routes are the router's patterns.
    routes = {dict(labels).get("route") for (name, labels) in after if name == "streamsvc_requests_total"}
    assert routes <= {"/livez", "/healthz", "/tracks", "/tracks/<track_id>", "/tracks/<track_id>/audio", "/plays",
                      "unmatched"}


def test_a_killed_worker_loses_no_count_and_its_replacement_reports_the_release(metered):
    server, port = metered
    for _ in range(4):
        assert server.request("GET", "/tracks")[0] == 200
    before = _scrape(port)
    victims = _workers(server.process.pid)
    assert len(victims) == 2
    os.kill(victims[0], signal.SIGKILL)
    wait_for(lambda: victims[0] not in _workers(server.process.pid) and len(_workers(server.process.pid)) == 2,
             "a replacement worker")
    wait_for(lambda: server.request("GET", "/livez")[0] == 200, "the service")
    after = _scrape(port)
    # Counters are sums over every process that ever counted: the dead worker's share stays.
    assert (_value(after, "streamsvc_requests_total", route="/tracks", method="GET", status="200")
            == _value(before, "streamsvc_requests_total", route="/tracks", method="GET", status="200"))
    deadline = time.monotonic() + 30
    while _value(after, "streamsvc_release_info", release=RELEASE) != 1 and time.monotonic() < deadline:
        time.sleep(0.2)
        after = _scrape(port)
    assert _value(after, "streamsvc_release_info", release=RELEASE) == 1


def test_metrics_without_a_directory_for_the_workers_counts_refuse_to_start(service_env, tmp_path):
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **service_env,
           "STREAM_BIND": f"127.0.0.1:{free_port()}", "STREAM_METRICS_BIND": f"127.0.0.1:{free_port()}"}
    result = subprocess.run([sys.executable, "-m", "gunicorn", "-c", str(APP_DIR / "gunicorn.conf.py")], env=env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "STREAM_METRICS_BIND needs PROMETHEUS_MULTIPROC_DIR" in result.stdout + result.stderr
