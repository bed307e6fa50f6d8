"""The lab over real SSH: every host reachable by Ansible and Fabric, each its own machine,
and `lab.up` idempotent."""

import os
import re
import subprocess

import pytest

from roadie.core import ssh
from roadie.core.paths import ROOT
from roadie.lab import engine, lab

# Fabric logs in as the deploy user, which the common role creates.
pytestmark = pytest.mark.usefixtures("provisioned")

VENV = ROOT / ".venv" / "bin"


def _ansible(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV / "ansible"), *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=180)


def test_ansible_pings_every_lab_host(lab_inventory):
    result = _ansible("all", "-m", "ansible.builtin.ping")
    assert result.returncode == 0, result.stdout + result.stderr
    answered = set(re.findall(r"^(\S+) \| SUCCESS", result.stdout, re.M))
    assert answered == set(lab_inventory.hosts)


def test_fabric_group_runs_hostname_and_each_host_answers_its_own_name(lab_inventory):
    results = ssh.run_parallel(lab_inventory.hosts.values(), "hostname")
    assert {name: r.stdout.strip() for name, r in results.items()} == {n: n for n in lab_inventory.hosts}
    assert all(r.ok for r in results.values())


def test_every_host_has_its_own_machine_id_and_host_key(lab_inventory):
    results = ssh.run_parallel(lab_inventory.hosts.values(),
                               "cat /etc/machine-id; cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub")
    ids, keys = set(), set()
    for name, r in results.items():
        machine_id, host_key = r.stdout.split()
        assert re.fullmatch(r"[0-9a-f]{32}", machine_id), name
        ids.add(machine_id)
        keys.add(host_key)
    assert len(ids) == len(keys) == len(lab_inventory.hosts)


def test_every_host_runs_systemd_as_pid_1(lab_inventory):
    results = ssh.run_parallel(lab_inventory.hosts.values(), "ps -o comm= -p 1; systemctl is-system-running || true")
    for name, r in results.items():
        comm, state = r.stdout.split()
        assert comm == "systemd", name
        assert state in ("running", "degraded"), f"{name}: {state}"


def test_lab_up_again_keeps_the_same_hosts_and_keys(lab_inventory):
    before = engine.docker("ps", "-q", "--no-trunc", "--filter", f"label={engine.LABEL}").stdout.split()
    known_before = lab_inventory.hosts["lb1"].known_hosts.read_text()
    states = lab.up(log=lambda _msg: None)
    after = engine.docker("ps", "-q", "--no-trunc", "--filter", f"label={engine.LABEL}").stdout.split()
    assert sorted(before) == sorted(after)
    assert lab_inventory.hosts["lb1"].known_hosts.read_text() == known_before
    assert all(s.state == "running" and s.ssh for s in states)
