"""The monitoring role's alert rules, scrape configuration and routes, rendered by Ansible with the role's
defaults and checked by Prometheus' and Alertmanager's own tools (`promtool`, `amtool`, unpacked from
Debian's packages into .tools/ by bin/bootstrap): every alert fires on the series that should fire it and
stays quiet on the others (alert_rules/roadie.rules.test.yml)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from roadie.core.paths import ROOT

HERE = Path(__file__).parent / "alert_rules"
TOOLS = ROOT / ".tools" / "bin"


def _tool(name: str) -> str:
    path = TOOLS / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run ./bin/bootstrap")
    return str(path)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("monitoring")
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_STRATEGY": "linear"}
    run = subprocess.run([str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", str(HERE / "hosts.yml"),
                          str(HERE / "render.yml"), "-e", f"out={out}",
                          "-e", f"__monitoring_rules_file={out}/roadie.rules.yml"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    shutil.copy(HERE / "roadie.rules.test.yml", out)
    return out


def _check(*argv: str, cwd: Path) -> str:
    run = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout + run.stderr


def test_promtool_passes_the_rules_and_the_configuration(rendered):
    assert "SUCCESS: 4 rules found" in _check(_tool("promtool"), "check", "rules", "roadie.rules.yml", cwd=rendered)
    _check(_tool("promtool"), "check", "config", "prometheus.yml", cwd=rendered)


def test_every_alert_fires_when_it_should_and_only_then(rendered):
    _check(_tool("promtool"), "test", "rules", "roadie.rules.test.yml", cwd=rendered)
    rules = yaml.safe_load((rendered / "roadie.rules.yml").read_text())
    tests = yaml.safe_load((rendered / "roadie.rules.test.yml").read_text())
    alerts = {r["alert"] for group in rules["groups"] for r in group["rules"]}
    tested = {t["alertname"] for case in tests["tests"] for t in case["alert_rule_test"]}
    assert alerts == tested, f"alerts without a test: {sorted(alerts - tested)}"
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["annotations"]["runbook"].startswith("fab "), rule["alert"]


def test_the_scrape_targets_come_from_the_inventory_and_alertmanager_takes_the_routes(rendered):
    config = yaml.safe_load((rendered / "prometheus.yml").read_text())
    stream = next(job for job in config["scrape_configs"] if job["job_name"] == "stream")
    assert [(s["targets"], s["labels"]["host"]) for s in stream["static_configs"]] == [
        (["10.87.0.101:9200"], "stream1"), (["[fd00::102]:9200"], "stream2")]
    _check(_tool("amtool"), "check-config", "alertmanager.yml", cwd=rendered)
