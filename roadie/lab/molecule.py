"""Molecule scenarios of the roles, run a few at a time.

Each scenario is its own `molecule test` process with its own containers (names are unique across the
roles' molecule.yml files, which `scenarios` checks), so two can run side by side: one converges while the
other waits on the package mirror or on systemd. Output goes to one log per scenario under logs/molecule/;
the summary names each scenario's result and time, and a failure prints its log's tail.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import yaml

from roadie.core.errors import RoadieError

# Scenarios that usually take longest go first, so that two workers finish close together.
SLOW_FIRST = ("postgresql/replication", "streaming/default", "haproxy/default", "postgresql/default")


@dataclass(frozen=True)
class Scenario:
    """roles/ROLE/molecule/NAME, labelled ROLE/NAME."""

    role: str
    name: str
    label: str


@dataclass(frozen=True)
class Outcome:
    scenario: Scenario
    returncode: int
    seconds: float
    log: Path

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def scenarios(roles_dir: Path, role: str | None = None, scenario: str | None = None) -> list[Scenario]:
    """The roles' scenarios (optionally one role's, or one scenario), slowest first. Fails with one line
    when two scenarios would start containers of the same name (they could not run side by side)."""
    found: list[Scenario] = []
    owners: dict[str, str] = {}
    for name in sorted(os.listdir(roles_dir)):
        mdir = roles_dir / name / "molecule"
        if not mdir.is_dir():
            continue
        for scen in sorted(os.listdir(mdir)):
            config = mdir / scen / "molecule.yml"
            if not config.is_file():
                continue
            label = f"{name}/{scen}"
            for platform in (yaml.safe_load(config.read_text()) or {}).get("platforms", []):
                other = owners.setdefault(platform["name"], label)
                if other != label:
                    raise RoadieError(f"molecule scenarios {other} and {label} both name a container "
                                      f"{platform['name']!r}; give each its own")
            if (not role or name == role) and (not scenario or scen == scenario):
                found.append(Scenario(name, scen, f"{name}/{scen}"))
    rank = {label: i for i, label in enumerate(SLOW_FIRST)}
    return sorted(found, key=lambda s: rank.get(s.label, len(rank)))


def run_all(items: list[Scenario], roles_dir: Path, log_dir: Path, *, workers: int = 2,
            report: Callable[[str], None] = print, env: dict[str, str] | None = None) -> list[Outcome]:
    """`molecule test` for every scenario, `workers` at a time; every scenario runs even after a failure."""
    log_dir.mkdir(parents=True, exist_ok=True)

    def one(item: Scenario) -> Outcome:
        log = log_dir / f"{item.role}-{item.name}.log"
        started = time.monotonic()
        with log.open("w") as out:
            proc = subprocess.run(["molecule", "test", "-s", item.name], cwd=roles_dir / item.role, stdout=out,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, check=False)
        return Outcome(item, proc.returncode, time.monotonic() - started, log)

    outcomes: list[Outcome] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(one, item) for item in items]
        for future in as_completed(futures):
            outcome = future.result()
            outcomes.append(outcome)
            state = "ok" if outcome.ok else f"FAILED (exit {outcome.returncode})"
            report(f"molecule: {outcome.scenario.label} {state} in {outcome.seconds:.0f} s (log: {outcome.log})")
            if not outcome.ok:
                tail = outcome.log.read_text(errors="replace").splitlines()[-60:]
                report("\n".join(f"  | {line}" for line in tail))
    return outcomes
