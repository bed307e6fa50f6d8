"""A changed or unknown SSH host key is refused by Ansible and by Fabric, with one clear line."""

import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from roadie import lab, ssh
from roadie.errors import RoadieError
from roadie.paths import ROOT

VENV = ROOT / ".venv" / "bin"


@pytest.fixture(scope="module")
def rotated_host_key(lab_inventory):
    """stream3 gets new SSH host keys, as after a reinstall or an impostor; restored afterwards."""
    name = "stream3"
    lab.exec_on(name, "sh", "-c", "rm -rf /root/keys.bak && mkdir /root/keys.bak && "
                "cp -a /etc/ssh/ssh_host_* /root/keys.bak/ && rm /etc/ssh/ssh_host_* && "
                "ssh-keygen -A >/dev/null && systemctl reset-failed ssh && systemctl restart ssh")
    yield lab_inventory.hosts[name]
    lab.exec_on(name, "sh", "-c", "rm /etc/ssh/ssh_host_* && cp -a /root/keys.bak/* /etc/ssh/ && "
                "rm -rf /root/keys.bak && systemctl reset-failed ssh && systemctl restart ssh")


def test_changed_host_key_is_refused_by_fabric(rotated_host_key):
    with pytest.raises(RoadieError) as err:
        ssh.connect(rotated_host_key)
    message = str(err.value)
    assert message.startswith("stream3 (10.87.0.103:22): host key changed")
    assert "refusing to connect" in message and "\n" not in message


def test_changed_host_key_is_refused_by_fab_cli_with_one_line(rotated_host_key):
    result = subprocess.run([str(VENV / "fab"), "check", "--group", "stream"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "stream3: FAILED stream3 (10.87.0.103:22): host key changed" in result.stdout
    assert "stream1: ok" in result.stdout and "stream2: ok" in result.stdout
    assert result.stderr.strip() == "error: 1 of 3 hosts failed: stream3"
    assert "Traceback" not in result.stdout + result.stderr


def test_changed_host_key_is_refused_by_ansible(rotated_host_key, tmp_path):
    # A fresh control path: a persisted master connection must not mask the new key.
    result = subprocess.run([str(VENV / "ansible"), "stream3", "-m", "ansible.builtin.ping"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "ANSIBLE_SSH_CONTROL_PATH_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert "UNREACHABLE" in result.stdout
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in result.stdout + result.stderr


def test_host_missing_from_known_hosts_is_refused(lab_inventory, tmp_path):
    partial = tmp_path / "known_hosts"
    partial.write_text("".join(line + "\n" for line in Path(lab_inventory.hosts["lb1"].known_hosts)
                               .read_text().splitlines() if not line.startswith("db1,")))
    db1 = replace(lab_inventory.hosts["db1"], known_hosts=partial)
    with pytest.raises(RoadieError, match=r"^db1 \(10.87.0.20:22\): host key unknown"):
        ssh.connect(db1)
    lb1 = ssh.connect(replace(lab_inventory.hosts["lb1"], known_hosts=partial))
    assert lb1.run("true", hide=True, in_stream=False).ok
