"""Rolling deploy time on 3 and 12 stream hosts under client traffic, against its floor and a plain playbook.

    .venv/bin/python bench/deploy.py [--hosts 3,12] [--batch 1] [--skip-playbook]

The floor is what the batches cannot avoid, measured in the same run: per batch, the drain (wait
for sessions) plus switch + restart + health gate, summed. Everything else (connect, lock, parallel
staging, migrations, enabling, audit) is Roadie's overhead. Failed requests are counted by clients
hitting the balancer throughout. The baseline is bench/rolling-update.yml, a plain Ansible playbook:
staging with Ansible's modules on every host at once (unarchive, a venv per release, pip offline),
then a `serial: 1` rolling update (HAProxy disable with drain, switch, restart, wait_for port, enable),
run with Roadie's ansible.cfg and strategy under the same traffic. Leaves the lab at 3 stream hosts.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import report
from roadie.core import inventory, ssh
from roadie.core.fleet import Fleet
from roadie.core.paths import ROOT
from roadie.deploy import builder, deploy, release, stream_host, wheelhouse
from roadie.deploy.types import Options, Outcome, Reporter
from roadie.lab import lab, provision, strategy
from tests.lab.traffic import Traffic


def quiet(*_args, **_kwargs) -> None:
    pass


def variant(tag: str, workdir: Path, new_dependencies: bool = False) -> release.Release:
    """A release of the app; `new_dependencies` gives it a dependency set no host has a venv for yet
    (an extra wheel nothing requires: a new key, no download)."""
    # Inside the checkout (git-ignored build/): the manifest records the git sha.
    app = ROOT / "build" / "variants" / f"bench-{tag}" / "app"
    shutil.rmtree(app.parent, ignore_errors=True)
    shutil.copytree(ROOT / "app", app, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    wheels = None
    if new_dependencies:
        wheels = workdir / f"wheels-{tag}-{time.time_ns()}"
        shutil.copytree(wheelhouse.wheelhouse(ROOT / "app" / "requirements.txt"), wheels)
        (wheels / f"zz_bench_{tag}_{time.time_ns()}-1.0-py3-none-any.whl").write_bytes(b"PK never installed")
    return builder.build(workdir / "out", f"bench-{tag}-{int(time.time())}", app_dir=app, wheels=wheels)


def prepare(count: int) -> Fleet:
    lab.up(count, log=quiet)
    run = provision.run("site", "lab", echo=False)
    if not run.ok:
        raise SystemExit("bench: site.yml failed:\n" + "\n".join(run.output.splitlines()[-30:]))
    return Fleet.from_inventory(inventory.load("lab"))


def roll(fleet: Fleet, built: release.Release, batch: str) -> tuple[Outcome, int, int]:
    manifest = release.verify(built.path)
    with Traffic(fleet.balancer.address, threads=2) as traffic:
        outcome = deploy.deploy(fleet, built.path, manifest, Options(batch=batch, message="bench"),
                                Reporter(stream=open("/dev/null", "w")))  # noqa: SIM115
    return outcome, traffic.report.sent, traffic.report.failed


def measured(outcome: Outcome, sent: int, failed: int) -> dict:
    """One deploy's figures: the floor (drain + switch, restart and health gate, per batch, summed)
    and where the rest went, from the deploy's own per-batch timings."""
    floor = sum(t.get("drain_s", 0) + t.get("switch_restart_health_s", 0) for t in outcome.timings)
    batches = sum(t.get("total_s", 0) for t in outcome.timings)
    return {"deploy_s": outcome.duration_s, "floor_s": floor, "ratio": outcome.duration_s / floor,
            "batches": len(outcome.timings), "requests": sent, "failed_requests": failed,
            "enable_wait_up_s": sum(t.get("enable_s", 0) for t in outcome.timings),
            "outside_batches_s": outcome.duration_s - batches, "timings": outcome.timings}


def plain_playbook(fleet: Fleet, built: release.Release) -> dict:
    """bench/rolling-update.yml (its own staging, then serial: 1) under traffic."""
    manifest = release.verify(built.path)
    env = strategy.ansible_env(warn=False)
    argv = [provision._ansible_playbook(), "-i", str(ROOT / "inventories" / "lab"),
            str(ROOT / "bench" / "rolling-update.yml"), "-e", f"bench_release={manifest.release_id}",
            "-e", f"bench_artifact={built.path}"]
    with Traffic(fleet.balancer.address, threads=2) as traffic:
        started = time.monotonic()
        result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
        play_s = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit("bench: rolling-update.yml failed:\n" + "\n".join(result.stdout.splitlines()[-30:]))
    return {"playbook_s": play_s, "total_s": play_s,
            "requests": traffic.report.sent, "failed_requests": traffic.report.failed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", default="3,12", help="stream host counts to measure")
    parser.add_argument("--batch", default="1", help="batch size (as fab deploy --batch)")
    parser.add_argument("--skip-playbook", action="store_true", help="do not run the plain Ansible baseline")
    args = parser.parse_args()
    rows, data = [], {}
    workdir = Path(tempfile.mkdtemp(prefix="roadie-bench-"))
    try:
        for count in [int(x) for x in args.hosts.split(",")]:
            fleet = prepare(count)
            first = variant("a", workdir)
            roll(fleet, first, args.batch)  # every host has a release and a previous one to drain from
            for i, host in enumerate(fleet.stream):
                with ssh.connect(host) as conn:
                    stream_host.seed(conn, first.id, with_db=i == 0)
            outcome, sent, failed = roll(fleet, variant("b", workdir), args.batch)
            figures = data[str(count)] = measured(outcome, sent, failed)
            rows.append((f"{count} stream hosts, batch {args.batch}: deploy / floor",
                         f"{outcome.duration_s:.1f} s / {figures['floor_s']:.1f} s = {figures['ratio']:.2f}x, "
                         f"{failed} failed of {sent} requests"))
            rows.append((f"{count} stream hosts: overhead over the floor",
                         f"enable + wait for HAProxy UP {figures['enable_wait_up_s']:.1f} s; outside the batches "
                         f"(connect, lock, stage, migrate, prune, audit) {figures['outside_batches_s']:.1f} s"))
            cold, cold_sent, cold_failed = roll(fleet, variant("d", workdir, new_dependencies=True), args.batch)
            new = figures["new_dependencies"] = measured(cold, cold_sent, cold_failed)
            rows.append((f"{count} stream hosts, new dependency set (every host builds a venv): deploy / floor",
                         f"{cold.duration_s:.1f} s / {new['floor_s']:.1f} s = {new['ratio']:.2f}x, "
                         f"{cold_failed} failed of {cold_sent} requests"))
            for label, value in rows[-3:]:
                print(f"  {label}: {value}", flush=True)
            if not args.skip_playbook:
                plain = plain_playbook(fleet, variant("c", workdir))
                data[str(count)]["plain_playbook"] = plain
                data[str(count)]["deploy_over_playbook"] = outcome.duration_s / plain["total_s"]
                rows.append((f"{count} stream hosts: plain playbook (its staging play + serial:1 play)",
                             f"{plain['total_s']:.1f} s; "
                             f"fab deploy takes {outcome.duration_s / plain['total_s']:.2f}x of it; "
                             f"{plain['failed_requests']} failed of {plain['requests']} requests"))
                print(f"  {rows[-1][0]}: {rows[-1][1]}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        lab.up(log=quiet)
        provision.run("site", "lab", limit="balancer", echo=False)  # drop the removed hosts from HAProxy
    report("deploy", rows, data)


if __name__ == "__main__":
    main()
