"""Audio delivery at the machine's limit, through lb1 against the lab (issue 16).

    .venv/bin/python bench/audio.py [--listeners 1000] [--rate 4096] [--label after]

Needs a lab with a release deployed (`inv up`, or `bench/deploy.py` before it); one stream host serves,
the others are drained in HAProxy for the run, and everything is put back afterwards (track 1's file by
`fab seed`).

1. Slow listeners: `--listeners` GETs of track 1's audio (a 64 MiB file for the run) through lb1, each
   reading `--rate` bytes a second from one of SOURCES controller addresses on the lab network (the
   per-client limits count each apart). Once all are open, an API client GETs /tracks and /tracks/<id>
   through lb1 for WINDOW seconds and times each request. Reported: listeners still receiving audio at the
   end of the window, their answers, and the API's p50/p99/max and failures.
2. Throughput: curl on the controller fetches the 64 MiB file PARALLEL at a time, ROUNDS times: from the
   stream host's nginx served statically on a port of its own; through the stream host's own site (the
   service checks, nginx delivers) with no balancer in front; and through lb1. Each as a ratio to the first.
   For the first two the stream host's firewall lets the controller in for the run. Then the most any
   hop through lb1: the kernel alone forwarding lb1's port FORWARD_PORT to the stream host's site
   (nftables DNAT and masquerade in lb1, no proxy, no TCP ended there), as a ratio to the first too.
3. CPU per GB served in each throughput phase: the stream host's and lb1's containers (cgroup CPU time),
   and the controller (all of this machine's busy CPU time less the lab containers').
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import report
from roadie.core import inventory, ssh
from roadie.core.fleet import Fleet
from roadie.core.paths import ROOT
from roadie.deploy import deploy
from roadie.deploy.balancer import Balancer
from roadie.lab import lab
from tests.lab.listeners import Listeners, lab_sources
from tests.web import request

SIZE = 64 * 1024 * 1024
SOURCES = 40
WINDOW = 20.0
PARALLEL, ROUNDS = 4, 3
STATIC_PORT = 8089
MEDIA = "/srv/stream/shared/media"
STATIC_DIR = "/var/lib/roadie-bench-static"
FORWARD_PORT = 8090
FORWARD_TABLE = "roadie_bench_forward"


def docker_root(container: str, command: str) -> str:
    """A command as root inside a lab container (the bench's own set-up, never Roadie's path)."""
    return subprocess.run(["docker", "exec", container, "sh", "-c", command], check=True, capture_output=True,
                          text=True).stdout


def cpu_seconds(containers: list[str]) -> dict[str, float]:
    """CPU seconds so far of each lab container (cgroup v1 or v2) and of this whole machine (busy time)."""
    out: dict[str, float] = {}
    for name in containers:
        cid = subprocess.run(["docker", "inspect", "-f", "{{.Id}}", name], check=True, capture_output=True,
                             text=True).stdout.strip()
        for path, scale in ((f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage", 1e-9),
                            (f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat", 1e-6),
                            (f"/sys/fs/cgroup/docker/{cid}/cpu.stat", 1e-6)):
            if os.path.exists(path):
                text = Path(path).read_text()
                value = text.split()[0] if path.endswith("usage") else text.split("usage_usec", 1)[1].split()[0]
                out[name] = int(value) * scale
                break
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = os.sysconf("SC_CLK_TCK")
    total = sum(int(x) for x in fields[:8])
    idle = int(fields[3]) + int(fields[4])
    out["machine"] = (total - idle) / ticks
    return out


def fetch_all(url: str) -> tuple[float, int, int]:
    """PARALLEL curls at a time, ROUNDS times: seconds taken, bytes of whole answers (200, SIZE bytes)
    and how many answers were anything else."""
    started, fetched, failed = time.monotonic(), 0, 0
    for _ in range(ROUNDS):
        procs = [subprocess.Popen(["curl", "-sS", "--noproxy", "*", "-o", "/dev/null", "-w",
                                   "%{http_code} %{size_download}", url], stdout=subprocess.PIPE, text=True)
                 for _ in range(PARALLEL)]
        for proc in procs:
            out, _ = proc.communicate(timeout=300)
            code, _, size = (out or "0 0").partition(" ")
            if code == "200" and int(size) == SIZE:
                fetched += SIZE
            else:
                failed += 1
    return time.monotonic() - started, fetched, failed


def throughput(label: str, url: str, containers: list[str]) -> dict:
    before = cpu_seconds(containers)
    seconds, fetched, failed = fetch_all(url)
    after = cpu_seconds(containers)
    gb = max(fetched, 1) / 1e9
    used = {k: after[k] - before[k] for k in after}
    lab_cpu = sum(v for k, v in used.items() if k != "machine")
    return {"label": label, "seconds": seconds, "bytes": fetched, "failed": failed, "mb_s": fetched / seconds / 1e6,
            "cpu_s_per_gb": {**{k: round(v / gb, 2) for k, v in used.items() if k != "machine"},
                             "controller": round((used["machine"] - lab_cpu) / gb, 2)}}


def kernel_forward(lb_container: str, target: str) -> None:
    """lb1's port FORWARD_PORT forwarded by the kernel to target:80 (both directions through lb1)."""
    docker_root(lb_container, f"nft add table ip {FORWARD_TABLE} && "
                f"nft add chain ip {FORWARD_TABLE} pre '{{ type nat hook prerouting priority -100; }}' && "
                f"nft add chain ip {FORWARD_TABLE} post '{{ type nat hook postrouting priority 100; }}' && "
                f"nft add rule ip {FORWARD_TABLE} pre tcp dport {FORWARD_PORT} dnat to {target}:80 && "
                f"nft add rule ip {FORWARD_TABLE} post ip daddr {target} tcp dport 80 masquerade && "
                f"nft insert rule inet roadie forward ip daddr {target} accept comment bench-forward && "
                f"nft insert rule inet roadie forward ip saddr {target} accept comment bench-forward")


def remove_rules(container: str, chain: str, comment: str) -> None:
    numbers = docker_root(container, f"nft -a list chain inet roadie {chain} | sed -n "
                          f"'s/.*comment \"{comment}\" # handle \\([0-9]*\\).*/\\1/p'").split()
    for number in numbers:
        docker_root(container, f"nft delete rule inet roadie {chain} handle {number}")


def slow_listeners(lb: str, count: int, rate: int, sources: tuple[str, ...]) -> dict:
    latencies: list[float] = []
    failures: list[str] = []
    with Listeners(lb, "/tracks/1/audio", rate=rate, sources=sources) as swarm:
        swarm.open(count)
        window_start = time.monotonic()
        stop = threading.Event()

        def api() -> None:
            n = 0
            while not stop.is_set():
                path = "/tracks" if n % 2 == 0 else f"/tracks/{n % 5 + 1}"
                started = time.monotonic()
                try:
                    status, _, _ = request(lb, 80, "GET", path, timeout=5)
                    if status != 200:
                        failures.append(f"{path}: {status}")
                except OSError as exc:
                    failures.append(f"{path}: {type(exc).__name__}")
                latencies.append(time.monotonic() - started)
                n += 1
                stop.wait(0.05)

        probe = threading.Thread(target=api)
        probe.start()
        stop.wait(WINDOW)
        stop.set()
        probe.join()
        receiving = swarm.receiving(since=time.monotonic() - 2.0)
        summary = swarm.summary()
    ordered = sorted(latencies) or [0.0]
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {"listeners": count, "receiving": receiving, "window_s": WINDOW, **summary,
            "api_requests": len(latencies), "api_failed": len(failures), "api_failures": failures[:10],
            "api_p50_ms": round(statistics.median(ordered) * 1000, 1), "api_p99_ms": round(p99 * 1000, 1),
            "api_max_ms": round(ordered[-1] * 1000, 1), "window_start": window_start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listeners", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=4096, help="bytes a second each listener reads")
    parser.add_argument("--label", default="after", help="what this run measures (before/after a change)")
    args = parser.parse_args()

    fleet = Fleet.from_inventory(inventory.load("lab"))
    serving, others = fleet.stream[0], fleet.stream[1:]
    lb = fleet.balancer.address
    container = f"roadie-{serving.name}"
    controller = str(lab.GATEWAY)
    deploy.seed_fleet(fleet, lambda *a, **k: None)     # the catalogue and media, whatever ran before
    track = ROOT / "build" / "bench-audio-track.wav"
    track.parent.mkdir(exist_ok=True)
    track.write_bytes(os.urandom(SIZE))
    with ssh.connect(serving) as conn, ssh.connect(fleet.balancer) as lb_conn:
        name = conn.run(f"ls {MEDIA} | grep '^tone-01-'", hide=True, in_stream=False).stdout.strip()
        conn.put(str(track), f"{MEDIA}/{name}")
        balancer = Balancer(lb_conn)
        for host in others:
            balancer.drain(host.name)
        docker_root(container, f"mkdir -p {STATIC_DIR} && cp {MEDIA}/{shlex.quote(name)} {STATIC_DIR}/track.wav && "
                    f"printf 'server {{ listen {serving.address}:{STATIC_PORT}; sendfile on; tcp_nopush on; "
                    f"location /static/ {{ alias {STATIC_DIR}/; }} }}\\n' > /etc/nginx/conf.d/zz-bench-static.conf "
                    f"&& nginx -t -q && systemctl reload nginx && nft insert rule inet roadie input ip saddr "
                    f"{controller} tcp dport {{ 80, {STATIC_PORT} }} accept comment bench-static")
        try:
            balancer.wait_up(serving.name, timeout=120)
            with lab_sources(SOURCES) as sources:
                listeners = slow_listeners(lb, args.listeners, args.rate, sources)
            # A host the listeners overwhelmed may be out of rotation for a while: wait until it serves again.
            recovered = time.monotonic()
            balancer.wait_up(serving.name, timeout=120)
            listeners["recovery_s"] = round(time.monotonic() - recovered, 1)
            containers = [container, "roadie-lb1"]
            static = throughput("static", f"http://{serving.address}:{STATIC_PORT}/static/track.wav", containers)
            direct = throughput(f"{serving.name}'s site", f"http://{serving.address}/tracks/1/audio", containers)
            through = throughput("through lb1", f"http://{lb}/tracks/1/audio", containers)
            kernel_forward("roadie-lb1", serving.address)
            forwarded = throughput("kernel forward", f"http://{lb}:{FORWARD_PORT}/tracks/1/audio", containers)
        finally:
            remove_rules(container, "input", "bench-static")
            remove_rules("roadie-lb1", "forward", "bench-forward")
            docker_root("roadie-lb1", f"nft delete table ip {FORWARD_TABLE} 2>/dev/null || true")
            docker_root(container, f"rm -rf {STATIC_DIR} /etc/nginx/conf.d/zz-bench-static.conf && "
                        "systemctl reload nginx")
            for host in others:
                balancer.enable(host.name)
            track.unlink(missing_ok=True)
            deploy.seed_fleet(fleet, lambda *a, **k: None)
    ratio = through["mb_s"] / static["mb_s"]
    direct_ratio = direct["mb_s"] / static["mb_s"]
    forward_ratio = forwarded["mb_s"] / static["mb_s"]
    rows = [
        (f"{args.label}: slow listeners on {serving.name} ({args.rate} B/s each)",
         f"{listeners['receiving']} of {args.listeners} receiving audio; answers {listeners['statuses']}, "
         f"errors {listeners['errors'] or 'none'}; {serving.name} serving again {listeners['recovery_s']} s after"),
        (f"{args.label}: API through lb1 meanwhile ({listeners['api_requests']} requests)",
         f"p50 {listeners['api_p50_ms']} ms, p99 {listeners['api_p99_ms']} ms, max {listeners['api_max_ms']} ms, "
         f"{listeners['api_failed']} failed"),
        (f"{args.label}: throughput through lb1 / nginx static on {serving.name}",
         f"{through['mb_s']:.0f} MB/s / {static['mb_s']:.0f} MB/s = {ratio:.2f}x "
         f"({through['failed']} and {static['failed']} of {PARALLEL * ROUNDS} downloads failed)"),
        (f"{args.label}: throughput through {serving.name}'s site, no balancer / nginx static",
         f"{direct['mb_s']:.0f} MB/s / {static['mb_s']:.0f} MB/s = {direct_ratio:.2f}x ({direct['failed']} failed)"),
        (f"{args.label}: lb1's kernel forwarding, no proxy (the most a hop through lb1 gives) / nginx static",
         f"{forwarded['mb_s']:.0f} MB/s / {static['mb_s']:.0f} MB/s = {forward_ratio:.2f}x "
         f"({forwarded['failed']} failed)"),
        (f"{args.label}: CPU s per GB through {serving.name}'s site",
         ", ".join(f"{k} {v}" for k, v in direct["cpu_s_per_gb"].items())),
        (f"{args.label}: CPU s per GB through lb1", ", ".join(f"{k} {v}" for k, v in through["cpu_s_per_gb"].items())),
        (f"{args.label}: CPU s per GB forwarded by lb1's kernel",
         ", ".join(f"{k} {v}" for k, v in forwarded["cpu_s_per_gb"].items())),
        (f"{args.label}: CPU s per GB nginx static", ", ".join(f"{k} {v}" for k, v in static["cpu_s_per_gb"].items())),
    ]
    report(f"audio-{args.label}", rows, {"listeners": listeners, "static": static, "through_lb1": through,
                                         "direct": direct, "ratio": ratio, "direct_ratio": direct_ratio,
                                         "kernel_forward": forwarded, "forward_ratio": forward_ratio,
                                         "rate": args.rate})


if __name__ == "__main__":
    main()
