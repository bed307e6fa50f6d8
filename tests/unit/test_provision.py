"""Provisioning runs are validated before ansible-playbook starts; recaps are parsed."""

import pytest

from roadie import inventory, provision
from roadie.errors import RoadieError

RECAP = """
PLAY RECAP *********************************************************************
cache1                     : ok=12   changed=0    unreachable=0    failed=0    skipped=3    rescued=0    ignored=0
db1                        : ok=30   changed=2    unreachable=0    failed=0    skipped=5    rescued=0    ignored=0
"""


def test_recap_is_parsed_per_host():
    recap = provision.parse_recap("TASK [x]\nok: [db1]\n" + RECAP)
    assert recap["cache1"]["changed"] == 0
    assert recap["db1"] == {"ok": 30, "changed": 2, "unreachable": 0, "failed": 0, "skipped": 5,
                            "rescued": 0, "ignored": 0}
    run = provision.PlaybookRun("site", 0, 1.0, recap)
    assert run.changed_hosts() == {"db1": 2}


@pytest.mark.parametrize("name, expected", [
    ("nosuch", "no playbook 'nosuch'"),
    ("../etc/passwd", "playbook must be a name"),
    ("site; rm -rf /", "playbook must be a name"),
])
def test_bad_playbook_names(name, expected):
    with pytest.raises(RoadieError, match=expected):
        provision.playbook_path(name)


def test_command_validates_limit_and_tags(tmp_path):
    inv = inventory.load("lab")
    playbook = tmp_path / "x.yml"
    argv = provision.command(playbook, inv, check=True, limit="database", tags="redis,postgresql_users")
    assert argv[1:] == ["-i", str(inv.source), str(playbook), "--check", "--limit", "database",
                        "--tags", "redis,postgresql_users"]
    with pytest.raises(RoadieError, match="unknown host or group 'nosuch'"):
        provision.command(playbook, inv, limit="nosuch")
    with pytest.raises(RoadieError, match="bad tag"):
        provision.command(playbook, inv, tags="redis;reboot")


def test_production_needs_its_vault_before_anything_runs(monkeypatch):
    monkeypatch.delenv("ANSIBLE_VAULT_PASSWORD_FILE", raising=False)
    with pytest.raises(RoadieError, match="vault.yml is missing: copy vault.yml.example"):
        provision.check_secrets(inventory.load("production"))
