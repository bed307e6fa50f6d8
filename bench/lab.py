"""Lab start-up and SSH fan-out: cold `lab.up` (image build), warm `lab.up`, a no-op `lab.up`,
and one parallel command (Fabric ThreadingGroup, verified host keys) on 1, 3 and 24 hosts.

    .venv/bin/python bench/lab.py [--skip-cold] [--runs N]

Leaves the default lab (3 stream hosts) running.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import median_of, report, timed
from roadie.core import inventory, ssh
from roadie.lab import engine, lab


def quiet(_message: str) -> None:
    pass


class Rows(list):
    """Result rows, also printed as they come so a failure later keeps the figures already taken."""

    def append(self, row: tuple[str, str]) -> None:
        print(f"  {row[0]}: {row[1]}", flush=True)
        super().append(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-cold", action="store_true", help="do not remove and rebuild the base image")
    parser.add_argument("--runs", type=int, default=5, help="runs per fan-out figure (median reported)")
    args = parser.parse_args()
    data: dict = {}
    rows = Rows()

    engine.ensure_tools(quiet)
    engine.ensure_docker(quiet)
    if not args.skip_cold:
        lab.down(quiet)
        engine.docker("rmi", "-f", engine.image_tag(), engine.IMAGE_ALIAS, check=False)
        data["cold_up_s"] = timed(lambda: lab.up(log=quiet))
        rows.append(("cold lab.up (image build + 7 hosts)", f"{data['cold_up_s']:.1f} s"))
    lab.down(quiet)
    data["warm_up_s"] = timed(lambda: lab.up(log=quiet))
    rows.append(("warm lab.up (image cached, 7 new hosts)", f"{data['warm_up_s']:.1f} s"))
    data["noop_up_s"] = timed(lambda: lab.up(log=quiet))
    rows.append(("lab.up on a running lab (no change)", f"{data['noop_up_s']:.1f} s"))

    data["up24_s"] = timed(lambda: lab.up(24, log=quiet))
    rows.append(("lab.up --stream-hosts 24 (21 new hosts)", f"{data['up24_s']:.1f} s"))
    streams = inventory.load("lab").group("stream")
    data["fanout"] = {}
    for count in (1, 3, 24):
        # As root, the lab's bootstrap account: these stream hosts are bare (no deploy user yet).
        hosts = [dataclasses.replace(h, user="root") for h in streams[:count]]

        def run(hosts=hosts) -> None:
            results = ssh.run_parallel(hosts, "hostname")
            bad = [name for name, r in results.items() if not r.ok or r.stdout.strip() != name]
            if bad:
                raise SystemExit(f"bench: hostname failed on {bad}")

        median, samples = median_of(run, args.runs)
        data["fanout"][count] = {"median_s": median, "samples_s": samples}
        rows.append((f"parallel `hostname` on {count} host(s), connect included",
                     f"{median * 1000:.0f} ms (median of {args.runs})"))
    ratio = data["fanout"][24]["median_s"] / data["fanout"][1]["median_s"]
    rows.append(("24 hosts / 1 host", f"{ratio:.2f}x"))
    data["fanout_24_over_1"] = ratio
    lab.up(log=quiet)
    report("lab", rows, data)


if __name__ == "__main__":
    main()
