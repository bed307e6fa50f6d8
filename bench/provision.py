"""Provisioning time on the lab: cold (fresh hosts) against the apt floor, and the no-change rerun.

    .venv/bin/python bench/provision.py [--data-tier]

Each cold figure starts from freshly created hosts (`lab.down` + `lab.up`); the base image is cached.
The floor is measured in the same run: the packages each host got from the roles (`apt-mark
showmanual` after the cold run, less the fresh host's) are installed with `apt-get update` +
`apt-get install --no-install-recommends` on freshly created hosts again, all hosts at once as
site.yml does; the slowest host's time is the floor. Then site.yml runs once more on those hosts
(packages already there: the rest of provisioning), which leaves a fully provisioned lab running.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, profile_lines, report
from roadie.core import inventory, ssh
from roadie.core.paths import ROOT
from roadie.lab import lab, provision

DATA_TIER = "database,cache"


def _as_root(hosts) -> list:
    """The lab's bootstrap account: the apt floor runs on bare hosts, before the deploy user exists."""
    return [dataclasses.replace(h, user="root") for h in hosts]


def quiet(_message: str) -> None:
    pass


def fresh_lab() -> None:
    lab.down(quiet)
    shutil.rmtree(ROOT / ".cache" / "ansible-facts", ignore_errors=True)
    lab.up(log=quiet)


PROFILE = {"ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks", "PROFILE_TASKS_TASK_OUTPUT_LIMIT": "12",
           "PROFILE_TASKS_SUMMARY_ONLY": "true"}


def timed_run(limit: str | None, profile: bool = False) -> provision.PlaybookRun:
    run = provision.run("site", "lab", limit=limit, echo=False, env=PROFILE if profile else None)
    if not run.ok:
        tail = "\n".join(run.output.splitlines()[-30:])
        raise SystemExit(f"bench: site.yml failed:\n{tail}")
    return run


def manual_packages() -> dict[str, set[str]]:
    """Every lab host's manually installed packages (what apt was asked for, by the image or a role)."""
    results = ssh.run_parallel(_as_root(inventory.load("lab").hosts.values()), "apt-mark showmanual", timeout=60)
    bad = [name for name, r in results.items() if not r.ok]
    if bad:
        raise SystemExit(f"bench: apt-mark failed on {bad}")
    return {name: set(r.stdout.split()) for name, r in results.items()}


def apt_floor(packages: dict[str, set[str]]) -> dict[str, float]:
    """On fresh hosts, all at once: seconds to refresh the lists and install each host's role packages."""
    hosts = inventory.load("lab").hosts

    def one(name: str) -> tuple[str, float]:
        command = ("export DEBIAN_FRONTEND=noninteractive && apt-get update -qq && apt-get install -y -qq "
                   f"--no-install-recommends {' '.join(shlex.quote(p) for p in sorted(packages[name]))} >/dev/null")
        with ssh.connect(_as_root([hosts[name]])[0]) as conn:
            started = time.monotonic()
            result = conn.run(command, hide=True, warn=True, in_stream=False, timeout=900)
            elapsed = time.monotonic() - started
        if not result.ok:
            raise SystemExit(f"bench: apt-get failed on {name}: {result.stderr.strip()[-500:]}")
        return name, elapsed

    return dict(ssh.parallel(one, sorted(packages)))


def site_with_floor(rows: list, data: dict) -> None:
    fresh_lab()
    base = manual_packages()
    cold = timed_run(None, profile=True)
    rerun = timed_run(None)
    changed = sum(c["changed"] for c in rerun.recap.values())
    slowest = profile_lines(cold.output)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "provision-cold.log").write_text(cold.output)  # the whole profile_tasks summary
    added = {name: pkgs - base[name] for name, pkgs in manual_packages().items()}
    fresh_lab()
    started = time.monotonic()
    floor_hosts = apt_floor(added)
    floor_wall = time.monotonic() - started
    floor_host = max(floor_hosts, key=floor_hosts.get)
    floor = floor_hosts[floor_host]
    after_floor = timed_run(None)
    data["site"] = {"cold_s": cold.duration_s, "rerun_s": rerun.duration_s, "rerun_changed": changed,
                    "floor_s": floor, "floor_host": floor_host, "cold_profile": slowest, "floor_wall_s": floor_wall,
                    "floor_hosts_s": floor_hosts,
                    "packages": {name: sorted(p) for name, p in added.items()}, "ratio": cold.duration_s / floor,
                    "after_floor_s": after_floor.duration_s}
    rows += [("whole site.yml on 7 hosts, cold", f"{cold.duration_s:.0f} s"),
             ("apt floor: same packages on fresh hosts, all at once, slowest host",
              f"{floor:.0f} s ({floor_host}, {len(added[floor_host])} packages)"),
             ("cold / floor", f"{cold.duration_s / floor:.2f}x"),
             ("site.yml on the floor's hosts (packages already installed)", f"{after_floor.duration_s:.0f} s"),
             ("whole site.yml, no-change rerun", f"{rerun.duration_s:.0f} s (changed={changed})")]
    rows += [(f"slowest cold task {i + 1}", line) for i, line in enumerate(slowest[:8])]
    for row in rows:
        print(f"  {row[0]}: {row[1]}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-tier", action="store_true", help="also the data tier alone, cold and rerun")
    args = parser.parse_args()
    rows, data = [], {}

    stages = [("data_tier", DATA_TIER, "data tier (common+postgresql+redis on db1, db2, cache1)")]
    for key, limit, label in stages if args.data_tier else []:
        fresh_lab()
        cold = timed_run(limit)
        rerun = timed_run(limit)
        changed = sum(c["changed"] for c in rerun.recap.values())
        data[key] = {"cold_s": cold.duration_s, "rerun_s": rerun.duration_s, "rerun_changed": changed}
        rows += [(f"{label}, cold", f"{cold.duration_s:.0f} s"),
                 (f"{label}, no-change rerun", f"{rerun.duration_s:.0f} s (changed={changed})")]
    site_with_floor(rows, data)
    report("provision", rows, data)


if __name__ == "__main__":
    main()
