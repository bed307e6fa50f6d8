"""The stream service's metrics on the real lab: each stream host serves them on its private address, the
controller scrapes them over the network (as Prometheus on a monitoring host will, through the host firewall
and the service's egress table), they count exactly what came through the balancer, and the balancer never
serves them."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from roadie.core import inventory
from roadie.deploy import deploy
from tests.lab.traffic import get
from tests.web import request

STREAM = ("stream1", "stream2", "stream3")
PORT = 9200


def _scrape(address: str) -> dict[tuple[str, tuple], float]:
    status, _, body = request(address, PORT, "GET", "/metrics", timeout=10)
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def _tracks_served(samples) -> float:
    return samples.get(("streamsvc_requests_total", (("method", "GET"), ("route", "/tracks"), ("status", "200"))), 0)


def test_every_stream_host_counts_what_the_balancer_sent_it_and_the_balancer_serves_no_metrics(stack):
    inv = inventory.load("lab")
    addresses = {h: inv.host_var(h, "roadie_private_address") for h in STREAM}
    before = {h: _scrape(a) for h, a in addresses.items()}
    for _ in range(30):
        assert get(stack["lb"], "/tracks")[0] == 200
    after = {h: _scrape(a) for h, a in addresses.items()}
    # Summed over the fleet, the catalogue reads grew by exactly what the balancer was sent (its health checks
    # ask /livez), whichever host answered each one.
    assert sum(_tracks_served(after[h]) - _tracks_served(before[h]) for h in STREAM) == 30
    # Each host reports the release it runs now (earlier tests of the session may have deployed others).
    running = {r.host: r.current for r in deploy.host_releases(stack["fleet"])}
    for host in STREAM:
        assert after[host].get(("streamsvc_release_info", (("release", running[host]),))) == 1, host
    # What the balancer forwards never reaches the metrics: the service's own port has no /metrics.
    assert get(stack["lb"], "/metrics")[0] == 404
