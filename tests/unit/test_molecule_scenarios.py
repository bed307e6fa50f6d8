"""Molecule scenarios run side by side only when each has containers of its own."""

from pathlib import Path

import pytest

from roadie.core.errors import RoadieError
from roadie.core.paths import ROOT
from roadie.lab import molecule


def _scenario(roles: Path, role: str, name: str, *containers: str) -> None:
    d = roles / role / "molecule" / name
    d.mkdir(parents=True)
    d.joinpath("molecule.yml").write_text("platforms:\n" + "".join(f"  - name: {c}\n" for c in containers))


def test_the_repositorys_scenarios_can_run_side_by_side_slowest_first():
    found = [s.label for s in molecule.scenarios(ROOT / "roles")]
    assert found[0] == "postgresql/replication" and len(found) == len(set(found)) >= 7


def test_two_scenarios_naming_one_container_are_refused_in_one_line(tmp_path):
    _scenario(tmp_path, "postgresql", "default", "pg1")
    _scenario(tmp_path, "postgresql", "replication", "pg1", "pg2")
    with pytest.raises(RoadieError, match="postgresql/default and postgresql/replication both name a "
                                          "container 'pg1'"):
        molecule.scenarios(tmp_path)


def test_a_role_and_a_scenario_select(tmp_path):
    _scenario(tmp_path, "redis", "default", "r1")
    _scenario(tmp_path, "redis", "replica", "r2", "r3")
    _scenario(tmp_path, "common", "default", "c1")
    assert [s.label for s in molecule.scenarios(tmp_path, role="redis")] == ["redis/default", "redis/replica"]
    assert [s.label for s in molecule.scenarios(tmp_path, scenario="default")] == ["common/default",
                                                                                   "redis/default"]


def test_every_scenario_runs_after_a_failure_and_its_log_tail_is_shown(tmp_path, monkeypatch):
    # A stand-in `molecule` on PATH: fails for one scenario, passes for the other.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "molecule"
    fake.write_text('#!/bin/sh\necho "converging $3 in $(basename "$PWD")"\n[ "$3" != bad ]\n')
    fake.chmod(0o755)
    _scenario(tmp_path / "roles", "redis", "bad", "r1")
    _scenario(tmp_path / "roles", "redis", "good", "r2")
    lines: list[str] = []
    outcomes = molecule.run_all(molecule.scenarios(tmp_path / "roles"), tmp_path / "roles", tmp_path / "logs",
                                report=lines.append, env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert {o.scenario.label: o.ok for o in outcomes} == {"redis/bad": False, "redis/good": True}
    assert any("redis/bad FAILED (exit 1)" in line for line in lines)
    assert any("| converging bad in redis" in line for line in lines)
