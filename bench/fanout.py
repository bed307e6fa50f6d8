"""Fan-out of the on-call commands: `fab status` and `fab run 'uptime'` on 1, 3, 12 and 24 hosts,
parallel (as the commands run) against serial (one host after another, same work), plus the
`fab status` command line end to end on all hosts.

    .venv/bin/python bench/fanout.py [--runs N] [--keep]

Needs 24 lab hosts: it runs `lab.up --stream-hosts 20` (7 + 17 hosts) and the common role on them
(the deploy user Fabric logs in as; no stream service, which costs `status` nothing), then puts the lab
back to its default 3 stream hosts unless --keep.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import median_of, report, timed
from bench.lab import Rows, quiet
from roadie.core import inventory, ssh
from roadie.core.paths import ROOT
from roadie.lab import engine, lab, provision
from roadie.status import probe

COUNTS = (1, 3, 12, 24)


def run_parallel(hosts: list) -> None:
    results = ssh.run_parallel(hosts, "uptime")
    bad = [name for name, r in results.items() if not r.ok]
    if bad:
        raise SystemExit(f"bench: uptime failed on {bad}")


def run_serial(hosts: list) -> None:
    for host in hosts:
        run_parallel([host])


def status_parallel(inv: inventory.Inventory, hosts: list) -> None:
    rows = ssh.parallel(lambda h: probe.probe(h, inv), hosts, max_workers=32)
    bad = [r.host for r in rows if not r.reachable]
    if bad:
        raise SystemExit(f"bench: status probe failed on {bad}")


def status_serial(inv: inventory.Inventory, hosts: list) -> None:
    for host in hosts:
        status_parallel(inv, [host])


def hosts_cpu_s(names: list[str]) -> float | None:
    """CPU seconds the lab hosts' containers have used so far (their cgroups), None where unknown."""
    ids = subprocess.run(["docker", "inspect", "-f", "{{.Id}}", *(engine.container_name(n) for n in names)],
                         capture_output=True, text=True, check=False).stdout.split()
    total = 0.0
    for cid in ids:
        v1 = Path(f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage")
        v2 = Path(f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat")
        if v1.is_file():
            total += int(v1.read_text()) / 1e9
        elif v2.is_file():
            total += int(v2.read_text().split("usage_usec", 1)[1].split()[0]) / 1e6
        else:
            return None
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (median reported)")
    parser.add_argument("--keep", action="store_true", help="leave the 24-host lab running")
    args = parser.parse_args()
    rows = Rows()
    data: dict = {"runs": args.runs, "status": {}, "run": {}}

    lab.up(20, log=quiet)
    # The extra stream hosts get the common role only: the deploy user Fabric logs in as, nothing more.
    common = provision.run("common", "lab", echo=False)
    if not common.ok:
        raise SystemExit("bench: provisioning the common role on the extra hosts failed")
    inv = inventory.load("lab")
    everyone = list(inv.hosts.values())
    if len(everyone) < max(COUNTS):
        raise SystemExit(f"bench: the lab has {len(everyone)} hosts, need {max(COUNTS)}")
    try:
        for count in COUNTS:
            hosts = everyone[:count]
            for name, parallel, serial in (("status", lambda h=hosts: status_parallel(inv, h),
                                            lambda h=hosts: status_serial(inv, h)),
                                           ("run", lambda h=hosts: run_parallel(h), lambda h=hosts: run_serial(h))):
                par, par_samples = median_of(parallel, args.runs)
                ser, ser_samples = median_of(serial, args.runs)
                data[name][count] = {"parallel_s": par, "serial_s": ser, "parallel_samples_s": par_samples,
                                     "serial_samples_s": ser_samples}
                rows.append((f"{name:6} {count:2} hosts  parallel / serial",
                             f"{par:6.2f} s / {ser:6.2f} s  ({ser / par:.1f}x)"))
        for name in ("status", "run"):
            ratio = data[name][24]["parallel_s"] / data[name][1]["parallel_s"]
            data[f"{name}_24_over_1"] = ratio
            rows.append((f"{name} parallel: 24 hosts / 1 host", f"{ratio:.2f}x"))
        env = {**os.environ, "ANSIBLE_INVENTORY": "lab"}
        fab = str(ROOT / ".venv" / "bin" / "fab")

        def cli() -> None:
            # exit 1 is expected: the bare extra stream hosts have no stream service to be active
            subprocess.run([fab, "status"], cwd=ROOT, env=env, capture_output=True, check=False, timeout=300)

        cli_s, cli_samples = median_of(cli, args.runs)
        data["fab_status_cli_24_s"] = cli_s
        data["fab_status_cli_samples_s"] = cli_samples
        startup = timed(lambda: subprocess.run([fab, "--list"], cwd=ROOT, env=env, capture_output=True, check=True))
        data["fab_startup_s"] = startup
        rows.append(("`fab status` command line, 24 hosts", f"{cli_s:.2f} s (of which fab start-up {startup:.2f} s)"))
        # Where the 24-host time goes: the controller's own CPU (all threads) and the hosts' (their
        # containers' cgroups: sshd, the session, the command) against the wall clock.
        for count in (1, 24):
            names = [h.name for h in everyone[:count]]
            hosts_before = hosts_cpu_s(names)
            before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            run_parallel(everyone[:count])
            after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - started
            hosts_after = hosts_cpu_s(names)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            hosts = None if hosts_before is None or hosts_after is None else hosts_after - hosts_before
            data[f"controller_cpu_{count}_s"] = cpu
            data[f"hosts_cpu_{count}_s"] = hosts
            shown = "unknown" if hosts is None else f"{hosts:.2f} s ({1000 * hosts / count:.0f} ms a host)"
            rows.append((f"run parallel {count:2} hosts: controller CPU / hosts' CPU / wall",
                         f"{cpu:.2f} s / {shown} / {wall:.2f} s"))
    finally:
        if not args.keep:
            lab.up(log=quiet)
    report("fanout", rows, data)


if __name__ == "__main__":
    main()
