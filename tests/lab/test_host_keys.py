"""A changed or unknown SSH host key is refused by Ansible and by Fabric, with one clear line."""

import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from roadie.core import ssh
from roadie.core.errors import RoadieError
from roadie.core.paths import ROOT
from roadie.lab import engine, provision, strategy
from tests.lab.fabrun import fab

# Fabric logs in as the deploy user, which the common role creates.
pytestmark = pytest.mark.usefixtures("provisioned")

VENV = ROOT / ".venv" / "bin"


@pytest.fixture(scope="module")
def rotated_host_key(lab_inventory):
    """stream3 gets new SSH host keys, as after a reinstall or an impostor; restored afterwards."""
    name = "stream3"
    engine.exec_on(name, "sh", "-c", "rm -rf /root/keys.bak && mkdir /root/keys.bak && "
                "cp -a /etc/ssh/ssh_host_* /root/keys.bak/ && rm /etc/ssh/ssh_host_* && "
                "ssh-keygen -A >/dev/null && systemctl reset-failed ssh && systemctl restart ssh")
    yield lab_inventory.hosts[name]
    engine.exec_on(name, "sh", "-c", "rm /etc/ssh/ssh_host_* && cp -a /root/keys.bak/* /etc/ssh/ && "
                "rm -rf /root/keys.bak && systemctl reset-failed ssh && systemctl restart ssh")


def test_changed_host_key_is_refused_by_fabric(rotated_host_key):
    with pytest.raises(RoadieError) as err:
        ssh.connect(rotated_host_key)
    message = str(err.value)
    assert message.startswith("stream3 (10.87.0.103:22): host key changed")
    assert "refusing to connect" in message and "\n" not in message


def test_changed_host_key_is_refused_by_fab_cli_with_one_line(rotated_host_key):
    result = fab("check", "--group", "stream", timeout=120)
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


@pytest.fixture
def control_dir(tmp_path):
    """A fresh SSH control path directory; the master connections left in it are closed afterwards."""
    yield tmp_path
    for socket in tmp_path.iterdir():
        subprocess.run(["ssh", "-o", f"ControlPath={socket}", "-O", "exit", "lab-host"], capture_output=True,
                       timeout=30)


def _reach(hosts: str, mitogen: bool, control_dir: Path, monkeypatch) -> tuple[subprocess.CompletedProcess, dict]:
    """tests/lab/playbooks/reach.yml with the environment every Roadie run gets, Mitogen on or off."""
    if mitogen:
        monkeypatch.delenv(strategy.MITOGEN_SWITCH, raising=False)
    else:
        monkeypatch.setenv(strategy.MITOGEN_SWITCH, "0")
    env = strategy.ansible_env({"ANSIBLE_SSH_CONTROL_PATH_DIR": str(control_dir)})
    assert env["ANSIBLE_STRATEGY"] == ("mitogen_linear" if mitogen else "linear")
    result = subprocess.run([str(VENV / "ansible-playbook"), "-i", "inventories/lab", "tests/lab/playbooks/reach.yml",
                             "-e", f"roadie_test_hosts={hosts}"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=180)
    return result, provision.parse_recap(result.stdout)


@pytest.mark.parametrize("mitogen", [True, False], ids=["mitogen", "builtin-linear"])
def test_changed_host_key_fails_the_playbook_for_that_host(rotated_host_key, mitogen, control_dir, monkeypatch):
    # A fresh control path: a persisted master connection must not mask the new key.
    result, recap = _reach("stream1,stream3", mitogen, control_dir, monkeypatch)
    assert result.returncode != 0
    assert recap["stream3"]["unreachable"] == 1 and recap["stream3"]["ok"] == 0
    assert recap["stream1"] == {**recap["stream1"], "ok": 1, "unreachable": 0, "failed": 0}
    refusal = ("Host key checking is enabled, and SSH reported an unrecognized or mismatching host key" if mitogen
               else "REMOTE HOST IDENTIFICATION HAS CHANGED")
    assert refusal in result.stdout + result.stderr
    # The strategy really ran: Mitogen's plugin announces itself through ansible-core's deprecation notice.
    assert ("strategy plugins not included in ansible.builtin" in result.stderr) == mitogen


def test_a_playbook_runs_under_the_builtin_fallback(provisioned, control_dir, monkeypatch):
    monkeypatch.setenv(strategy.MITOGEN_SWITCH, "0")
    monkeypatch.setenv("ANSIBLE_SSH_CONTROL_PATH_DIR", str(control_dir))
    run = provision.run("common", "lab", limit="stream1", echo=False)
    assert run.ok, run.output[-3000:]
    assert run.recap["stream1"]["changed"] == 0 and run.recap["stream1"]["ok"] > 10
    assert "strategy plugins not included in ansible.builtin" not in run.output
