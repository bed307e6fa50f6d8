"""Provisioning time on the lab: cold (fresh hosts) and no-change rerun, for the data tier and for
the whole site.

    .venv/bin/python bench/provision.py [--skip-full]

Each cold figure starts from freshly created hosts (`lab.down` + `lab.up`); the base image is cached.
Leaves a fully provisioned lab running.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import report  # noqa: E402
from roadie import lab, provision  # noqa: E402
from roadie.paths import ROOT  # noqa: E402

DATA_TIER = "database,cache"


def quiet(_message: str) -> None:
    pass


def fresh_lab() -> None:
    lab.down(quiet)
    shutil.rmtree(ROOT / ".cache" / "ansible-facts", ignore_errors=True)
    lab.up(log=quiet)


def timed_run(limit: str | None) -> provision.PlaybookRun:
    run = provision.run("site", "lab", limit=limit, echo=False)
    if not run.ok:
        tail = "\n".join(run.output.splitlines()[-30:])
        raise SystemExit(f"bench: site.yml failed:\n{tail}")
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-full", action="store_true", help="only the data tier")
    args = parser.parse_args()
    rows, data = [], {}

    stages = [("data_tier", DATA_TIER, "data tier (common+postgresql+redis on db1, db2, cache1)")]
    if not args.skip_full:
        stages.append(("site", None, "whole site.yml on 7 hosts"))
    for key, limit, label in stages:
        fresh_lab()
        cold = timed_run(limit)
        rerun = timed_run(limit)
        changed = sum(c["changed"] for c in rerun.recap.values())
        data[key] = {"cold_s": cold.duration_s, "rerun_s": rerun.duration_s, "rerun_changed": changed}
        rows += [(f"{label}, cold", f"{cold.duration_s:.0f} s"),
                 (f"{label}, no-change rerun", f"{rerun.duration_s:.0f} s (changed={changed})")]
    report("provision", rows, data)


if __name__ == "__main__":
    main()
